"""The status journal as the pipeline writes it and `onboard status` reads it, on the local stack."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from rich.console import Console
from typer.testing import CliRunner, Result

from cli.dlq import list_dead_letters, render_one
from cli.main import app
from shared.contracts import OutcomeStatus, StageName
from shared.journal import SqliteJournal, TransitionKind, open_journal
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, local_stack
from tests.fixtures.azurite import Azurite
from tests.fixtures.pipeline import onboard
from tests.samples import sample_request as demo_request

pytestmark = pytest.mark.stack  # every test here starts stand-ins

PARTNERS = "partners@contoso.com"
UNKNOWN_GROUP = "no-such-group@contoso.com"
WIDE = {"COLUMNS": "220"}  # rich wraps to the terminal; keep each row on one line for the asserts


async def status_command(arguments: list[str], env: dict[str, str]) -> Result:
    # The command runs its own event loop (asyncio.run): give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, arguments, env=env)


async def test_each_transition_is_journalled_and_onboard_status_prints_it(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.sandbox.inject("exchange", 503, count=1, operation="New-MailContact")
    with caplog.at_level(logging.INFO, "onboarding"):
        outcomes = await onboard(
            stack,
            [
                demo_request("j-ok", "ana@fabrikam.example", "Ana Lind", PARTNERS),
                demo_request("j-unknown", "bo@fabrikam.example", "Bo Ek", UNKNOWN_GROUP),
            ],
        )
    assert outcomes["j-ok"].status is OutcomeStatus.SUCCEEDED, outcomes["j-ok"]

    journal = SqliteJournal(stack.journal_database)
    ok, unknown = await journal.history("j-ok"), await journal.history("j-unknown")
    await journal.close()
    assert [(t.stage, t.decision, t.attempt) for t in ok] == [
        (StageName.CREATE_CONTACT, TransitionKind.RETRY_SCHEDULED, 1),
        (StageName.CREATE_CONTACT, TransitionKind.PASSED_ON, 2),
        (StageName.ADD_MEMBER, TransitionKind.PASSED_ON, 1),
        (StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, 1),
    ]
    assert "503" in (ok[0].cause or "")
    assert ok[-1].outcome_status is OutcomeStatus.SUCCEEDED
    assert [(t.decision, t.outcome_status) for t in unknown] == [(TransitionKind.DEAD_LETTERED, OutcomeStatus.FAILED)]
    assert (unknown[0].cause or "").startswith("GroupNotFound: ")
    assert all("ana@fabrikam.example" not in (t.cause or "") for t in ok), "addresses stay out of the journal"

    env = {"ONBOARDING_JOURNAL": stack.environment["ONBOARDING_JOURNAL"], **WIDE}
    history = await status_command(["status", "j-ok"], env)
    assert history.exit_code == 0, history.output
    assert "History of request j-ok" in history.output
    kinds = {kind.value for kind in TransitionKind}
    words = [line.split() for line in history.output.splitlines()]
    assert [next(word for word in line if word in kinds) for line in words if kinds.intersection(line)] == [
        "retry-scheduled",
        "passed-on",
        "passed-on",
        "finished",
    ]
    summary = await status_command(["status"], env)
    assert summary.exit_code == 0, summary.output
    rows: dict[str, str] = {}
    for line in summary.output.splitlines():  # the first line naming each request is its table row
        if line.split()[:1] in (["j-ok"], ["j-unknown"]):
            rows.setdefault(line.split()[0], line)
    assert set(rows) == {"j-ok", "j-unknown"}
    assert "finished" in rows["j-ok"] and "Succeeded" in rows["j-ok"]
    assert "dead-lettered" in rows["j-unknown"]

    # The tenant's group address is shown wherever it is named, the person's never (docs/logging.md).
    refused = " ".join((await status_command(["status", "j-unknown"], env)).output.split())  # as wrapped
    assert f"No group <{UNKNOWN_GROUP}> exists" in refused and "bo@fabrikam.example" not in refused
    logged = "\n".join(r.getMessage() for r in caplog.records if r.request_id == "j-unknown")  # type: ignore[attr-defined]
    assert f"<{UNKNOWN_GROUP}>" in logged
    assert all("ana@" not in r.getMessage() and "bo@" not in r.getMessage() for r in caplog.records)
    async with (
        ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
        client.get_queue_receiver("create-contact", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dead_letters,
    ):
        (dead_letter,) = await dead_letters.peek_messages(max_message_count=10)
        (view,) = await list_dead_letters(client, [StageName.CREATE_CONTACT])
    shown = Console(width=200, record=True)
    with shown.capture() as captured:
        shown.print(render_one(StageName.CREATE_CONTACT, dead_letter, datetime.now(UTC)))
    assert f"<{UNKNOWN_GROUP}>" in view.description and f"<{UNKNOWN_GROUP}>" in captured.get()
    assert '"b***@fabrikam.example"' in captured.get() and "bo@fabrikam.example" not in captured.get()


def test_onboard_status_explains_a_missing_or_malformed_journal(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["status"], env={"ONBOARDING_JOURNAL": f"sqlite:{tmp_path / 'none.db'}", **WIDE})
    assert missing.exit_code == 2
    assert "No journal at" in missing.output and "onboard sandbox" in missing.output
    assert not (tmp_path / "none.db").exists(), "reading must not create an empty journal"
    malformed = CliRunner().invoke(
        app, ["status"], env={"ONBOARDING_JOURNAL": "AccountName=x;AccountKey=c2VjcmV0;", **WIDE}
    )
    assert malformed.exit_code == 2
    assert "unknown form" in malformed.output and "c2VjcmV0" not in malformed.output
    not_a_journal = tmp_path / "notes.db"
    not_a_journal.write_text("these are notes, not SQLite")
    unreadable = CliRunner().invoke(app, ["status"], env={"ONBOARDING_JOURNAL": f"sqlite:{not_a_journal}", **WIDE})
    assert unreadable.exit_code == 1
    assert "DatabaseError" in unreadable.output and "Traceback" not in unreadable.output


async def test_a_journal_that_refuses_writes_costs_a_log_line_not_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "journal.db"
    SqliteJournal(database)  # the schema, then a trigger that fails every write as a full disk would
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON transitions BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with local_stack(journal_database=database) as stack, caplog.at_level(logging.WARNING, "onboarding.runner"):
        outcomes = await onboard(stack, [demo_request("j-nolog", "cy@fabrikam.example", "Cy Ho", PARTNERS)])
    assert outcomes["j-nolog"].status is OutcomeStatus.SUCCEEDED, outcomes["j-nolog"]
    failures = [r.getMessage() for r in caplog.records if "could not journal" in r.getMessage()]
    assert len(failures) == 3, failures  # create-contact, add-member, verify-delivery


async def test_the_host_journals_to_table_storage_when_the_setting_names_it(azurite: Azurite) -> None:
    setting = f"tables:TableName=hostjournal;{azurite.connection_string}"
    with local_stack(settings={"ONBOARDING_JOURNAL": setting}) as stack:
        outcomes = await onboard(stack, [demo_request("j-tables", "di@fabrikam.example", "Di Roy", PARTNERS)])
        wrote_sqlite = stack.journal_database.exists()
    journal = open_journal(setting)
    assert journal is not None
    try:
        history = await journal.history("j-tables")
    finally:
        await journal.close()
    assert outcomes["j-tables"].status is OutcomeStatus.SUCCEEDED, outcomes["j-tables"]
    assert [(t.stage, t.decision, t.outcome_status) for t in history] == [
        (StageName.CREATE_CONTACT, TransitionKind.PASSED_ON, None),
        (StageName.ADD_MEMBER, TransitionKind.PASSED_ON, None),
        (StageName.VERIFY_DELIVERY, TransitionKind.FINISHED, OutcomeStatus.SUCCEEDED),
    ]
    assert not wrote_sqlite, "the stack's default SQLite journal was not used"
