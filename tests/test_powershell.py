"""Every PowerShell command the product prints is safe to paste: values are single-quoted literals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.grant_plan import GroupKindInUse, Identity, plan_for
from shared.powershell import SINGLE_QUOTES, quoted

ROOT = Path(__file__).resolve().parents[1]
SENDER = "o'welcome\u2018@contoso.com"
HOSTILE = "o'brien\u2018x\u2019y\u201az\u201b@fabrikam.example $(Remove-Mailbox -Identity *) `whoami` \"; exit"


def unquote(literal: str) -> str:
    """Read a single-quoted literal the way PowerShell's tokenizer does; fails if it ends early."""
    assert literal[0] in SINGLE_QUOTES
    text, i = [], 1
    while i < len(literal):
        c = literal[i]
        if c in SINGLE_QUOTES:
            if i + 1 < len(literal) and literal[i + 1] in SINGLE_QUOTES:
                text.append(literal[i + 1])  # a doubled quote: one literal quote, and the string goes on
                i += 2
                continue
            assert i == len(literal) - 1, f"the string ends early, at {i}: {literal[i:]!r} would run as code"
            return "".join(text)
        text.append(c)
        i += 1
    raise AssertionError("the string never ends")


@pytest.mark.parametrize("value", ["partners@contoso.com", "o'neil@fabrikam.example", HOSTILE, "", "'", "\u201b\u201b"])
def test_a_quoted_value_reads_back_whole(value: str) -> None:
    assert unquote(quoted(value)) == value


def test_the_grant_steps_quote_every_value_they_splice_in() -> None:
    plan = plan_for(frozenset(GroupKindInUse), SENDER)
    identity = Identity(object_id="4f7a0c2e-5b1d-4e8a-9c3f-0a1b2c3d4e5f", app_id="9d3e1f2a", display_name=HOSTILE)
    commands = [command for step in plan.manual_steps(identity) for command in step.commands]
    text = "\n".join(commands)
    assert f"-DisplayName {quoted(HOSTILE)}" in text
    assert f"-Resource {quoted(SENDER)}" in text
    # The sender is a string inside the OPATH filter, itself a string: quoted twice, inner first.
    assert f"-RecipientRestrictionFilter {quoted('PrimarySmtpAddress -eq ' + quoted(SENDER))}" in text
    outside_values = text.replace(quoted(HOSTILE), "")
    assert '"' not in outside_values, "no double-quoted string: PowerShell expands $(...) inside those"


def test_no_printed_command_quotes_a_spliced_value_by_hand() -> None:
    """`-Identity '{x}'` or `-Identity "{x}"` in an f-string is how the unsafe commands were written."""
    by_hand = re.compile(r"""-[A-Z][A-Za-z]+ ['"\u2018\u2019]\{""")
    sources = [*ROOT.joinpath("shared").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert found == []
