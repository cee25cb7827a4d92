"""PowerShell text the product prints for an administrator to paste (remedies in outcomes, grant steps).

Every value spliced into such a command comes from outside (an address, a display name, a group's
name) and is written as a single-quoted string, the one PowerShell form that expands nothing
(`$(...)`, `$var` and backticks stay literal). Inside it, PowerShell's parser ends the string at
any of five quote characters: the ASCII apostrophe and the typographic quotes U+2018 to U+201B
(CharExtensions.IsSingleQuote in the PowerShell parser); each is escaped by doubling it, which is
what PowerShell's own CodeGeneration.EscapeSingleQuotedStringContent does.
"""

from __future__ import annotations

SINGLE_QUOTES = frozenset("'\u2018\u2019\u201a\u201b")


def quoted(value: str) -> str:
    """`value` as a PowerShell single-quoted string literal that means exactly `value`."""
    return "'" + "".join(c + c if c in SINGLE_QUOTES else c for c in value) + "'"
