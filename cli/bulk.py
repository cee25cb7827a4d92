"""`onboard bulk FILE.csv`: many requests at once, every row checked before anything is sent.

A row becomes the same contract v1 request `onboard submit` sends (shared/contracts.py), so a row
this command accepts is one the pipeline accepts. Each row has a stable request id: its
`request_id` column, else a digest of who is onboarded where, so sending the same file again
within create-contact's duplicate-detection window adds nothing (Service Bus drops the copies).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from rich.progress import Progress

from cli.following import Advance, Narration, send_and_follow, stopped_waiting
from cli.outcomes import wait_exit_code
from cli.plumbing import (
    DUPLICATE_WINDOW_MINUTES,
    DUPLICATE_WINDOW_TEXT,
    console,
    errors,
    fail,
    settings_for,
    with_servicebus,
)
from cli.upstream import group_target, request_problems
from shared.contracts import OnboardingRequest, OutcomeEvent, OutcomeStatus, RequestAction, StageName
from shared.leases import end_refusal
from shared.settings import ServiceBusSettings

REQUIRED = ("external_email", "display_name", "group", "source_system")
OPTIONAL = ("first_name", "last_name", "request_id", "allow_external_senders", "action", "expires_at")
MAX_ROWS = 50_000
MAX_BYTES = 20 * 1024 * 1024
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
COLUMNS = REQUIRED + OPTIONAL
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ACTIONS = {action.value for action in RequestAction}


class BulkFileError(ValueError):
    """The file as a whole cannot be read (not the rows): missing columns, too big, not UTF-8."""


@dataclass(frozen=True)
class Row:
    line: int  # the line the row starts on, as an editor shows it
    request_id: str
    request: OnboardingRequest


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    reason: str


@dataclass(frozen=True)
class Checked:
    rows: list[Row]
    problems: list[Problem]  # every problem of every bad row, in file order

    @property
    def bad_rows(self) -> int:
        return len({problem.line for problem in self.problems})


def stable_request_id(
    email: str, group: str, source_system: str, action: str = RequestAction.ONBOARD, expires_at: str = ""
) -> str:
    """Who is onboarded (offboarded, updated) into which group for whom, until when: the same row gives the
    same id in every run. An offboard and a renewal (another end) are other requests than the onboarding, so
    duplicate detection does not drop them; a plain onboarding row keeps the id it always had."""
    parts = [email.strip().lower(), group.strip().lower(), source_system.strip()]
    parts += [action] if action != RequestAction.ONBOARD else []
    parts += [expires_at] if expires_at else []
    return "bulk-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def dry_run_id(request_id: str) -> str:
    """A dry run must not take the real request's id, or duplicate detection would drop the real run."""
    return "dry-run-" + hashlib.sha256(request_id.encode()).hexdigest()[:32]


def check_file(path: Path, *, dry_run: bool = False) -> Checked:
    """Every row, validated; every problem with its line number. Nothing is sent from here."""
    if path.stat().st_size > MAX_BYTES:
        raise BulkFileError(f"larger than {MAX_BYTES // (1024 * 1024)} MB: split it")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")  # a BOM (Excel writes one) is dropped by check_text
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise BulkFileError(f"line {line}: not UTF-8 text (byte {error.start}): save it as CSV UTF-8") from None
    return check_text(text, dry_run=dry_run)


def check_text(text: str, *, dry_run: bool = False) -> Checked:
    records = _records(text.removeprefix("\ufeff"))
    header = next((fields for _, fields in records if fields), [])  # csv gives [] for a blank line
    columns = [name.strip() for name in header]
    if len(columns) == 1 and columns[0].count(";") >= len(REQUIRED) - 1:
        # Excel saves "CSV" with semicolons where the decimal separator is a comma.
        raise BulkFileError(
            "line 1: the columns are separated by semicolons, not commas: save the file as "
            '"CSV UTF-8 (Comma delimited)" or replace each ; with ,'
        )
    if twice := sorted({name for name in columns if columns.count(name) > 1}):
        raise BulkFileError(f"line 1: column(s) named more than once: {', '.join(twice)}")
    missing = [name for name in REQUIRED if name not in columns]
    unknown = [name for name in columns if name not in COLUMNS]
    if missing or unknown:
        said = [f"missing column(s): {', '.join(missing)}"] if missing else []
        said += [f"unknown column(s): {', '.join(unknown)}"] if unknown else []
        raise BulkFileError(f"line 1: {'; '.join(said)} (columns: {', '.join(COLUMNS)})")
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line_of: dict[str, int] = {}
    seen = 0
    for line, fields in records:
        if not any(value.strip() for value in fields):
            continue  # a blank line
        seen += 1
        if seen > MAX_ROWS:
            raise BulkFileError(f"more than {MAX_ROWS} rows: split the file")
        if more := len(fields) - len(columns):
            side = "more" if more > 0 else "fewer"
            problems.append(
                Problem(line, "row", f"{abs(more)} field(s) {side} than the header's {len(columns)} columns")
            )
            continue
        checked = _check_row(line, dict(zip(columns, fields, strict=True)), dry_run)
        if isinstance(checked, list):
            problems += checked
        elif (first := first_line_of.setdefault(checked.request_id, line)) != line:
            problems.append(Problem(line, "row", f"the same request as line {first} (request id {checked.request_id})"))
        else:
            rows.append(checked)
    return Checked(rows, problems)


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """Each CSV record with the line it starts on (a quoted field can hold line breaks)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise BulkFileError(f"line {start}: not valid CSV: {error}") from None
        yield start, fields


def _check_row(line: int, raw: dict[str, str], dry_run: bool) -> Row | list[Problem]:
    """The row as a request, or every problem it has: one per field, in column order."""
    values = {name: value.strip() for name, value in raw.items()}
    action = values.get("action", "").lower() or RequestAction.ONBOARD.value
    optional_name = action == RequestAction.OFFBOARD  # an offboard names the person by address alone
    said = {
        name: "required" for name in REQUIRED if not values[name] and not (optional_name and name == "display_name")
    }
    senders = values.get("allow_external_senders", "").lower()
    if senders and senders not in _BOOLEANS:
        said["allow_external_senders"] = "must be true or false"
    if action not in _ACTIONS:
        said["action"] = f"must be {', '.join(sorted(_ACTIONS))} (empty: onboard)"
        action = RequestAction.ONBOARD.value
    group, expires_at = values["group"], values.get("expires_at", "")
    request_id = values.get("request_id") or stable_request_id(
        values["external_email"], group, values["source_system"], action, expires_at
    )
    try:
        request = OnboardingRequest.model_validate(
            {
                "action": action,
                "external_email": values["external_email"],
                "display_name": values["display_name"] or None,
                "expires_at": expires_at or None,
                "first_name": values.get("first_name") or None,
                "last_name": values.get("last_name") or None,
                "group": group_target(group),
                "source_system": values["source_system"],
                "request_id": request_id,  # the row's own, checked before a dry run derives its id from it
                "allow_external_senders": _BOOLEANS.get(senders, True),
                "dry_run": dry_run,
            }
        )
    except ValidationError as error:
        for field, reason in request_problems(error, fields=COLUMNS).items():
            said.setdefault(field, reason)
    else:
        # The end as intake will judge it (in the future, at most three years away), judged now.
        if refusal := end_refusal(request, datetime.now(UTC)):
            said["expires_at"] = refusal
    if said:
        in_column_order = sorted(said, key=lambda name: COLUMNS.index(name) if name in COLUMNS else len(COLUMNS))
        return [Problem(line, name, said[name]) for name in in_column_order]
    if dry_run:
        request_id = dry_run_id(request_id)
        request = request.model_copy(update={"request_id": request_id})
    return Row(line, request_id, request)


def spreadsheet_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading single quote
    (OWASP, "CSV Injection"), which the spreadsheet hides; the request id itself is the text after it."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_request_ids(path: Path, rows: Sequence[Row]) -> None:
    """`line,request_id` for every row sent, as CSV: a request id may hold a comma or a quote, and
    may start like a formula (`=HYPERLINK(...)` is a valid id), which a spreadsheet would run."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(("line", "request_id"))
        writer.writerows((row.line, spreadsheet_cell(row.request_id)) for row in rows)


def send_file(
    csv_file: Path,
    *,
    check: bool,
    skip_invalid: bool,
    dry_run: bool,
    reply_to: str | None,
    output: Path | None,
    wait: bool,
    timeout: float,
) -> int:
    """Check the file, then (unless `check`) send its rows and with `wait` follow them; the exit code:
    0 checked or sent, 2 bad rows or file, and with `wait` as cli.outcomes.wait_exit_code says."""
    try:
        checked = check_file(csv_file, dry_run=dry_run)
    except BulkFileError as error:
        raise fail(f"{csv_file.name}: {error}", 2) from None
    for problem in checked.problems:
        errors.print(f"line {problem.line}: {problem.field}: {problem.reason}", markup=False, soft_wrap=True)
    total = len(checked.rows) + checked.bad_rows
    if check:
        if not total:
            raise fail("No rows below the header; nothing to check.", 2)
        if checked.problems:
            raise fail(f"{checked.bad_rows} bad row(s) of {total}; nothing sent (--check).", 2)
        console.print(f"{total} row(s) valid; nothing sent (--check).", markup=False)
        return 0
    if checked.problems and not skip_invalid:
        raise fail(f"{checked.bad_rows} bad row(s); nothing sent. Fix them, or send the rest with --skip-invalid.", 2)
    if not checked.rows:
        raise fail("No valid rows; nothing sent.", 2)
    settings = settings_for("bulk", ServiceBusSettings)  # only now: checking a file needs no Service Bus
    rows = checked.rows
    sent_ids: list[str] = []  # once all are sent: what Ctrl-C while waiting leaves behind
    sent_so_far = 0
    again = (
        f"`onboard bulk {csv_file} --wait` again within {DUPLICATE_WINDOW_MINUTES} minutes waits for them "
        "once more and sends none twice"
    )

    def count_sent(count: int) -> None:
        nonlocal sent_so_far
        sent_so_far += count

    def say_sent(request_ids: list[str]) -> None:
        sent_ids.extend(request_ids)
        skipped = f", skipped {checked.bad_rows} bad row(s)" if checked.problems else ""
        console.print(f"Sent {len(rows)} request(s) to {StageName.CREATE_CONTACT}{skipped}.", markup=False)
        console.print(
            "Service Bus silently drops a message whose request id it saw in the last "
            f"{DUPLICATE_WINDOW_MINUTES} minutes, so a re-run inside that window onboards "
            "nothing new.",
            markup=False,
            soft_wrap=True,
        )
        if output is not None:
            write_request_ids(output, rows)
            console.print(f"Request ids written to {output}.", markup=False)
        elif len(rows) <= 20:
            console.print("\n".join(r.request_id for r in rows), markup=False)

    def interrupted() -> str:
        if sent_ids:
            return stopped_waiting(sent_ids, "Interrupted while waiting", again=again)
        if sent_so_far:
            return (
                f"Interrupted after sending {sent_so_far} of {len(rows)} request(s). Run the same command again "
                f"within {DUPLICATE_WINDOW_MINUTES} minutes: Service Bus drops the ones already sent."
            )
        return "Interrupted; nothing was sent."

    sent = with_servicebus(
        settings,
        lambda client: send_and_follow(
            client,
            [row.request for row in rows],
            reply_to=reply_to,
            outcome_queue=reply_to or settings.outcome_queue,
            follow_seconds=timeout if wait else None,
            narration=Narration(
                sending=_progress("Sending", count_sent), sent=say_sent, following=_progress("Outcomes"), again=again
            ),
        ),
        interrupted=interrupted,
    )
    if sent.followed is None:  # not --wait
        return 0
    return _report(rows, sent.followed.outcomes, sent.followed.duplicates)


def _progress(label: str, also: Advance | None = None) -> Callable[[int], AbstractContextManager[Advance]]:
    """A progress bar on a terminal (none otherwise), gone when the step is done; `also` is told each step."""

    @contextmanager
    def bar(total: int) -> Iterator[Advance]:
        with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
            task = progress.add_task(label, total=total)

            def advance(count: int) -> None:
                progress.advance(task, count)
                if also is not None:
                    also(count)

            yield advance

    return bar


def _report(rows: Sequence[Row], outcomes: dict[str, OutcomeEvent], earlier: dict[str, OutcomeEvent]) -> int:
    """The count per outcome status and the line of every failed (or planned) row, this run's and, for rows
    Service Bus dropped as duplicates, the earlier run's that stands; the exit code (cli.outcomes.wait_exit_code)."""
    by_status: dict[str, int] = {}
    for event in outcomes.values():
        by_status[event.status] = by_status.get(event.status, 0) + 1
    missing = len(rows) - len(outcomes) - len(earlier)
    summary = ", ".join(f"{status} {count}" for status, count in sorted(by_status.items()))
    console.print(f"Outcomes: {summary or 'none'}" + (f", no outcome yet {missing}" if missing else ""), markup=False)
    if earlier:
        stood = ", ".join(
            f"{status} {count}" for status, count in sorted(Counter(e.status for e in earlier.values()).items())
        )
        console.print(
            f"Not run again: {len(earlier)} request(s) ran within the {DUPLICATE_WINDOW_TEXT} duplicate-detection "
            f"window before this send, so Service Bus dropped them; their earlier outcomes stand ({stood}; "
            "`onboard status ID`).",
            markup=False,
        )
    for row in rows:
        outcome = outcomes.get(row.request_id) or earlier.get(row.request_id)
        before = " (earlier run)" if row.request_id in earlier else ""
        if outcome is not None and outcome.status is OutcomeStatus.FAILED:
            console.print(f"  line {row.line}: {row.request_id}: {outcome.reason}{before}", markup=False)
        elif outcome is not None and outcome.status is OutcomeStatus.PLANNED:
            console.print(f"  line {row.line}: {'; '.join(outcome.changes) or 'nothing to do'}{before}", markup=False)
    return wait_exit_code(outcomes.get(row.request_id) or earlier.get(row.request_id) for row in rows)
