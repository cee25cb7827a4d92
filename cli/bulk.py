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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from azure.servicebus.aio import ServiceBusClient
from pydantic import ValidationError

from cli.upstream import request_message
from shared.contracts import OnboardingRequest, StageName

REQUIRED = ("external_email", "display_name", "group", "source_system")
OPTIONAL = ("first_name", "last_name", "request_id", "allow_external_senders")
MAX_ROWS = 50_000
MAX_BYTES = 20 * 1024 * 1024
# Service Bus Standard refuses a batch over 256 KiB as the broker counts it. The SDK fills a batch to
# its own estimate, which came out 19 bytes short of what the emulator received (262,163 bytes for a
# full 262,144-byte batch of 1,000 rows), and Service Bus answers "exceeds the limit (262144 bytes)"
# the same way (azure-sdk-for-python issue 37916). A quarter to spare costs a few more sends.
BATCH_BYTES = 192 * 1024
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


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
    problems: list[Problem]


def stable_request_id(email: str, group: str, source_system: str) -> str:
    """Who is onboarded into which group for whom: the same row gives the same id in every run."""
    identity = "\n".join((email.strip().lower(), group.strip().lower(), source_system.strip()))
    return "bulk-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def dry_run_id(request_id: str) -> str:
    """A dry run must not take the real request's id, or duplicate detection would drop the real run."""
    return "dry-run-" + hashlib.sha256(request_id.encode()).hexdigest()[:32]


def check_file(path: Path, *, dry_run: bool = False) -> Checked:
    """Every row, validated; every problem with its line number. Nothing is sent from here."""
    if path.stat().st_size > MAX_BYTES:
        raise BulkFileError(f"{path.name} is larger than {MAX_BYTES // (1024 * 1024)} MB: split it")
    try:
        text = path.read_text(encoding="utf-8")  # a BOM (Excel writes one) is dropped by check_text
    except UnicodeDecodeError as error:
        raise BulkFileError(f"{path.name} is not UTF-8 text (byte {error.start}): save it as CSV UTF-8") from None
    return check_text(text, dry_run=dry_run)


def check_text(text: str, *, dry_run: bool = False) -> Checked:
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    columns = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED if name not in columns]
    unknown = [name for name in columns if name not in REQUIRED + OPTIONAL]
    if missing or unknown:
        said = [f"missing column(s): {', '.join(missing)}"] if missing else []
        said += [f"unknown column(s): {', '.join(unknown)}"] if unknown else []
        raise BulkFileError(f"line 1: {'; '.join(said)} (columns: {', '.join(REQUIRED + OPTIONAL)})")
    reader.fieldnames = columns
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line_of: dict[str, int] = {}
    try:
        for raw in reader:
            line = reader.line_num  # the row's last line; rows with quoted newlines span more
            if len(rows) + len(problems) >= MAX_ROWS:
                raise BulkFileError(f"more than {MAX_ROWS} rows: split the file")
            if None in raw:
                problems.append(Problem(line, "row", f"{len(raw[None])} more field(s) than columns"))
                continue
            if not any((value or "").strip() for value in raw.values()):
                continue  # a blank line
            checked = _check_row(line, raw, dry_run)
            if isinstance(checked, Problem):
                problems.append(checked)
            elif (first := first_line_of.setdefault(checked.request_id, line)) != line:
                problems.append(
                    Problem(line, "row", f"the same request as line {first} (request id {checked.request_id})")
                )
            else:
                rows.append(checked)
    except csv.Error as error:
        raise BulkFileError(f"line {reader.line_num}: not valid CSV: {error}") from None
    return Checked(rows, problems)


def _check_row(line: int, raw: dict[str, str | None], dry_run: bool) -> Row | Problem:
    values = {name: (value or "").strip() for name, value in raw.items()}
    group = values["group"]
    senders = values.get("allow_external_senders", "").lower()
    if senders and senders not in _BOOLEANS:
        return Problem(line, "allow_external_senders", "must be true or false")
    request_id = values.get("request_id") or stable_request_id(values["external_email"], group, values["source_system"])
    if dry_run:
        request_id = dry_run_id(request_id)
    try:
        request = OnboardingRequest.model_validate(
            {
                "external_email": values["external_email"],
                "display_name": values["display_name"],
                "first_name": values.get("first_name") or None,
                "last_name": values.get("last_name") or None,
                "group": {"smtp_address": group} if "@" in group else {"object_id": group},
                "source_system": values["source_system"],
                "request_id": request_id,
                "allow_external_senders": _BOOLEANS.get(senders, True),
                "dry_run": dry_run,
            }
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "row"
        return Problem(line, "group" if field.startswith("group") else field, first["msg"])
    return Row(line, request_id, request)


async def send_rows(
    client: ServiceBusClient, rows: Sequence[Row], *, reply_to: str | None, sent: Callable[[int], None]
) -> None:
    """In Service Bus batches (as many messages as fit in one send), reporting progress per batch."""
    async with client.get_queue_sender(StageName.CREATE_CONTACT.value) as sender:
        batch = await sender.create_message_batch(max_size_in_bytes=BATCH_BYTES)
        for row in rows:
            message = request_message(row.request, row.request_id, reply_to=reply_to)
            try:
                batch.add_message(message)
            except ValueError:  # MessageSizeExceededError: the batch is full
                await sender.send_messages(batch)
                sent(len(batch))
                batch = await sender.create_message_batch(max_size_in_bytes=BATCH_BYTES)
                batch.add_message(message)
        if len(batch):
            await sender.send_messages(batch)
            sent(len(batch))
