"""Table columns whose values a person copies into the next command: request ids, reason names.

rich fits a table to the terminal by wrapping, folding or cutting any column; a request id cut to
`bulk-1c7cbb…` or a reason folded into `UnsupportedGroupKi` / `nd` cannot be pasted. Such a column
is as wide as its longest value and never wraps, so the free-text columns around it give way; only a
value wider than the terminal itself is folded (never cut).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table


def copyable_column(table: Table, header: str, values: Iterable[str], **options: Any) -> None:
    widest = max((len(value) for value in values), default=0)
    table.add_column(header, no_wrap=True, overflow="fold", min_width=max(widest, len(header)), **options)
