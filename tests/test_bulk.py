"""`onboard bulk`: every bad row reported with its line before anything is sent, batches through the
real SDK to the emulator, stable request ids (a re-run adds nothing), and --wait to the outcomes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from typer.testing import CliRunner

from cli.bulk import BulkFileError, check_file, check_text, stable_request_id
from cli.main import app
from shared.settings import SERVICEBUS_CONNECTION
from standins.servicebus_emulator import ServiceBusEmulator
from standins.stack import LocalStack, running_host

HEADER = "external_email,display_name,group,source_system\n"
TEMPLATE = Path("docs/bulk-template.csv")


def good_row(n: int) -> str:
    return f"person.{n}@fabrikam.example,Person {n},partners@contoso.com,demo-hr\n"


def thousand_rows_with_twenty_bad() -> tuple[str, list[int]]:
    """The issue's acceptance file: 1,000 rows, 20 of them bad in different ways; the bad lines."""
    bad_shapes = [
        "not-an-address,Someone,partners@contoso.com,demo-hr\n",
        "x@fabrikam.example,,partners@contoso.com,demo-hr\n",
        "y@fabrikam.example,Y,,demo-hr\n",
        "z@fabrikam.example,Z,partners@contoso.com,\n",
        "w@fabrikam.example,W,partners@contoso.com,demo-hr,extra\n",
    ]
    lines: list[str] = []
    bad: list[int] = []
    for n in range(1000):
        if n % 50 == 7:
            lines.append(bad_shapes[len(bad) % len(bad_shapes)])
            bad.append(n + 2)  # the header is line 1
        else:
            lines.append(good_row(n))
    return HEADER + "".join(lines), bad


def test_every_bad_row_of_a_thousand_is_reported_with_its_line() -> None:
    text, bad_lines = thousand_rows_with_twenty_bad()
    checked = check_text(text)
    assert [p.line for p in checked.problems] == bad_lines
    assert len(checked.rows) == 980
    assert {p.field for p in checked.problems} == {"external_email", "display_name", "group", "source_system", "row"}


def test_the_template_is_valid_and_quoted_fields_and_a_bom_are_read() -> None:
    checked = check_file(TEMPLATE)
    assert checked.problems == []
    assert [r.request.display_name for r in checked.rows] == ["Jordan Reyes", "Chen, Mei"]
    assert [r.request.allow_external_senders for r in checked.rows] == [True, False]
    assert checked.rows[1].request_id == "hr-2026-0042"
    assert check_text("\ufeff" + HEADER + good_row(1)).rows[0].request.source_system == "demo-hr"


def test_ids_are_stable_per_person_and_group_and_a_repeated_row_is_reported() -> None:
    assert stable_request_id(" A@Fabrikam.example", "partners@contoso.com", "demo-hr") == stable_request_id(
        "a@fabrikam.example", "Partners@contoso.com", "demo-hr"
    )
    assert stable_request_id("a@fabrikam.example", "other@contoso.com", "demo-hr") != stable_request_id(
        "a@fabrikam.example", "partners@contoso.com", "demo-hr"
    )
    checked = check_text(HEADER + good_row(1) + "\n" + good_row(2) + good_row(1).upper().replace("DEMO-HR", "demo-hr"))
    assert [(p.line, p.reason.split(" (")[0]) for p in checked.problems] == [(5, "the same request as line 2")]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("external_email,display_name\n", "missing column(s): group, source_system"),
        (HEADER.strip() + ",colour\n", "unknown column(s): colour"),
        (HEADER + 'a@b.example,"unclosed,partners@contoso.com,demo-hr\n', "not valid CSV"),
    ],
)
def test_a_file_that_cannot_be_read_as_a_whole_says_why(text: str, said: str) -> None:
    with pytest.raises(BulkFileError, match=said.replace("(", r"\(").replace(")", r"\)")):
        check_text(text)


async def _queued(connection: str) -> int:
    async with (
        ServiceBusClient.from_connection_string(connection) as client,
        client.get_queue_receiver("create-contact") as receiver,
    ):
        return len(await receiver.peek_messages(max_message_count=1000))


@pytest.mark.stack
def test_bad_rows_stop_the_send_skip_invalid_sends_the_rest_and_a_rerun_adds_nothing(
    servicebus_emulator: ServiceBusEmulator, tmp_path: Path
) -> None:
    env = {SERVICEBUS_CONNECTION: servicebus_emulator.connection_string}
    text, bad_lines = thousand_rows_with_twenty_bad()
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(text)

    refused = CliRunner().invoke(app, ["bulk", str(csv_file)], env=env)
    assert refused.exit_code == 2
    assert [f"line {n}:" in refused.output for n in bad_lines] == [True] * 20
    assert "20 bad row(s); nothing sent" in refused.output
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 0

    ids = tmp_path / "ids.csv"
    sent = CliRunner().invoke(app, ["bulk", str(csv_file), "--skip-invalid", "--output", str(ids)], env=env)
    assert sent.exit_code == 0, sent.output
    assert "Sent 980 request(s)" in sent.output and "skipped 20 bad row(s)" in sent.output
    assert len(ids.read_text().splitlines()) == 981
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 980

    again = CliRunner().invoke(app, ["bulk", str(csv_file), "--skip-invalid"], env=env)
    assert again.exit_code == 0
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 980  # duplicate detection dropped all


@pytest.fixture
def host_in_background(stack: LocalStack) -> Iterator[LocalStack]:
    """The local host on its own thread and loop, so a command's own asyncio.run can wait on it."""
    stop = threading.Event()

    async def serve() -> None:
        async with running_host(stack.environment):
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    yield stack
    stop.set()
    thread.join(timeout=30)


def test_wait_follows_every_row_to_its_outcome(host_in_background: LocalStack, tmp_path: Path) -> None:
    csv_file = tmp_path / "three.csv"
    csv_file.write_text(HEADER + "".join(good_row(n) for n in range(3)) + "bad,,,\n")
    env = {SERVICEBUS_CONNECTION: host_in_background.environment[SERVICEBUS_CONNECTION]}
    result = CliRunner().invoke(app, ["bulk", str(csv_file), "--skip-invalid", "--wait", "--timeout", "60"], env=env)
    assert result.exit_code == 0, result.output
    assert "Outcomes: Succeeded 3" in result.output


def test_a_dry_run_plans_every_row_changes_nothing_and_leaves_the_real_ids_free(
    host_in_background: LocalStack, tmp_path: Path
) -> None:
    directory = host_in_background.sandbox.directory
    before = (len(directory.contacts), len(directory.users), {g.id: len(g.members) for g in directory.groups.values()})
    csv_file = tmp_path / "plan.csv"
    existing = "existing.guest@fabrikam.example"  # in the demo tenant already: nothing to create for them
    csv_file.write_text(
        HEADER + good_row(1) + f"{existing},Existing Guest,partners@contoso.com,demo-hr\n"
        "blocked@fabrikam.example,Not Allowed,partners@contoso.com,unknown-source\n"
    )
    env = {SERVICEBUS_CONNECTION: host_in_background.environment[SERVICEBUS_CONNECTION]}
    result = CliRunner().invoke(app, ["bulk", str(csv_file), "--dry-run", "--wait", "--timeout", "60"], env=env)
    assert result.exit_code == 3, result.output  # the unknown source system fails, as it would for real
    assert "Failed 1, Planned 2" in result.output
    assert "line 2: Create a mail contact for Person 1; Add Person 1 to Partners" in result.output
    assert "line 3: Add Existing Guest to Partners" in result.output
    after = (len(directory.contacts), len(directory.users), {g.id: len(g.members) for g in directory.groups.values()})
    assert after == before

    async def dead_letters() -> int:
        async with (
            ServiceBusClient.from_connection_string(env[SERVICEBUS_CONNECTION]) as client,
            client.get_queue_receiver("create-contact", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as receiver,
        ):
            return len(await receiver.peek_messages(max_message_count=10))

    assert asyncio.run(dead_letters()) == 0  # a dry run's failure is an outcome, not a dead letter

    real = CliRunner().invoke(app, ["bulk", str(csv_file), "--skip-invalid", "--wait", "--timeout", "60"], env=env)
    assert "Succeeded 2" in real.output  # the dry run did not take the real requests' ids
