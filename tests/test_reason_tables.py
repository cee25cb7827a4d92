"""docs/reasons.md's and the runbook's dead-letter reason tables agree with the one table the code reads
(shared/reasons.py): every reason, in its order, and in the runbook its fix and who sets it."""

from __future__ import annotations

import re
from pathlib import Path

from shared.contracts import DeadLetterReason
from shared.reasons import REASONS, Fix, facts_of

ROOT = Path(__file__).resolve().parents[1]
SERVICE_BUS_MARK = "(Service Bus's own)"


def reason_rows(document: Path) -> list[list[str]]:
    """The cells of each row of the table under the document's "## Dead-letter reasons" heading."""
    section = document.read_text().split("\n## Dead-letter reasons\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]


def reason_of(cell: str) -> str:
    found = re.fullmatch(r"`([A-Za-z]+)`(?: \(Service Bus's own\))?", cell)
    assert found, f"not a reason cell: {cell!r}"
    return found.group(1)


def test_the_table_describes_every_reason_once() -> None:
    assert list(REASONS) == list(DeadLetterReason)


def test_the_reasons_page_lists_every_reason_in_the_tables_order() -> None:
    rows = reason_rows(ROOT / "docs" / "reasons.md")
    assert [reason_of(row[0]) for row in rows] == [reason.value for reason in REASONS]


def test_the_runbook_gives_each_reason_the_tables_fix_and_marks_service_bus_own() -> None:
    rows = reason_rows(ROOT / "docs" / "runbook.md")
    documented = [(reason_of(row[0]), row[1], row[0].endswith(SERVICE_BUS_MARK)) for row in rows]
    expected = [(reason.value, facts.fix_text, facts.set_by_service_bus) for reason, facts in REASONS.items()]
    assert documented == expected


def test_the_runbook_says_a_replay_skips_exactly_the_reasons_the_table_calls_not_replayable() -> None:
    said = re.search(
        r"`onboard dlq replay` skips only ((?:`\w+`(?:, | and )?)+)", (ROOT / "docs" / "runbook.md").read_text()
    )
    assert said, "the runbook says which reasons a replay skips"
    skipped = re.findall(r"`(\w+)`", said.group(1))
    assert [reason.value for reason, facts in REASONS.items() if not facts.replayable] == skipped


def test_a_reason_the_app_does_not_know_has_no_facts() -> None:
    facts = facts_of("PolicyDenied")
    assert facts is not None and facts.fix is Fix.REPLAY and facts.refuses_the_request
    assert facts_of("SomethingElse") is None
