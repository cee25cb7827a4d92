"""`onboard bulk`: every bad row reported with its line before anything is sent, batches through the
real SDK to the emulator, stable request ids (a re-run adds nothing), and --wait to the outcomes."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from typer.testing import CliRunner, Result

from cli.bulk import BulkFileError, check_file, check_text, spreadsheet_cell, stable_request_id, write_request_ids
from cli.main import app
from shared.settings import SERVICEBUS_CONNECTION
from standins.servicebus_emulator import ServiceBusEmulator
from standins.stack import LocalStack, running_host
from tests.waiting import NEVER_SECONDS, returns

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
        (HEADER.strip() + ",display_name\n", "column(s) named more than once: display_name"),
        (  # as Excel saves "CSV" where the decimal separator is a comma
            HEADER.replace(",", ";") + "a@b.example;A;partners@contoso.com;demo-hr\n",
            'line 1: the columns are separated by semicolons, not commas: save the file as "CSV UTF-8 (Comma '
            'delimited)" or replace each ; with ,',
        ),
    ],
)
def test_a_file_that_cannot_be_read_as_a_whole_says_why(text: str, said: str) -> None:
    with pytest.raises(BulkFileError, match=said.replace("(", r"\(").replace(")", r"\)")):
        check_text(text)


FULL_HEADER = "external_email,display_name,group,source_system,first_name,last_name,request_id,allow_external_senders\n"


def problems_of(text: str) -> list[tuple[int, str, str]]:
    return [(p.line, p.field, p.reason) for p in check_text(text).problems]


def test_every_problem_of_a_row_is_reported_so_a_file_is_fixed_in_one_round() -> None:
    checked = check_text(HEADER + good_row(1) + "bad,,partners@contoso.com,\n")
    assert [(p.line, p.field) for p in checked.problems] == [
        (3, "external_email"),
        (3, "display_name"),
        (3, "source_system"),
    ]
    assert checked.bad_rows == 1 and len(checked.rows) == 1


def test_a_short_row_is_refused_like_a_long_one_and_blank_lines_are_skipped() -> None:
    short = "a@fabrikam.example,A,partners@contoso.com,demo-hr,A\n"  # 5 of the header's 8 columns
    long = "b@fabrikam.example,B,partners@contoso.com,demo-hr,B,B,,true,extra\n"
    assert problems_of(FULL_HEADER + "\n" + short + ",,,,,,,\n" + long) == [
        (3, "row", "3 field(s) fewer than the header's 8 columns"),
        (5, "row", "1 field(s) more than the header's 8 columns"),
    ]


def test_a_row_is_reported_at_the_line_it_starts_on() -> None:
    """Also in --output, which writes each sent row's line."""
    valid = '"c@fabrikam.example","Chen, Mei\n",partners@contoso.com,demo-hr\n'  # lines 2-3; the name is stripped
    bad = '"d@fabrikam.example","Dee,\nMei",partners@contoso.com,demo-hr\n'  # lines 5-6: a line break inside
    checked = check_text(HEADER + valid + good_row(4) + bad + valid.replace("c@", "e@"))
    assert [r.line for r in checked.rows] == [2, 4, 7]
    assert [(p.line, p.field) for p in checked.problems] == [(5, "display_name")]


def test_an_unterminated_quote_is_reported_at_the_line_its_record_starts_on() -> None:
    with pytest.raises(BulkFileError, match=r"^line 3: not valid CSV: unexpected end of data"):
        check_text(HEADER + good_row(1) + 'a@b.example,"unclosed,partners@contoso.com,demo-hr\n' + good_row(2))


def test_a_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    csv_file = tmp_path / "latin1.csv"
    csv_file.write_bytes(
        (HEADER + good_row(1) + "j@fabrikam.example,Jos\xe9,partners@contoso.com,demo-hr\n").encode("latin-1")
    )
    with pytest.raises(BulkFileError, match=r"^line 3: not UTF-8 text \(byte \d+\)"):
        check_file(csv_file)


GROUP_RULE = "must be the group's SMTP address (name@domain) or its object id (a GUID), not its display name"
REQUEST_ID_RULE = r"must be 1-128 characters without spaces, control characters, / \ # or ?"


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("a@fabrikam.example,A,,demo-hr", "group", "required"),
        ("a@fabrikam.example,A,partners,demo-hr", "group", GROUP_RULE),
        ("a@fabrikam.example,A,1234-5678,demo-hr", "group", GROUP_RULE),
        (
            "a@fabrikam.example,A,partners@contoso.com,demo hr",
            "source_system",
            "must be 1-64 letters, digits, '.', '_' or '-'",
        ),
        (",A,partners@contoso.com,demo-hr", "external_email", "required"),
        ("a@fabrikam.example, ,partners@contoso.com,demo-hr", "display_name", "required"),
        ("a@fabrikam.example,A,partners@contoso.com,", "source_system", "required"),
        (
            "a@fabrikam,A,partners@contoso.com,demo-hr",
            "external_email",  # the email validator's own words: they are plain
            "is not an email address: The part after the @-sign is not valid. It should have a period.",
        ),
        ("a@fabrikam.example,A,partners@contoso.com,demo-hr,,,has space,", "request_id", REQUEST_ID_RULE),
        ("a@fabrikam.example,A,partners@contoso.com,demo-hr,,,a/b,", "request_id", REQUEST_ID_RULE),
        (
            "a@fabrikam.example,A,partners@contoso.com,demo-hr,,,,maybe",
            "allow_external_senders",
            "must be true or false",
        ),
    ],
)
def test_reasons_are_plain_for_an_administrator(row: str, field: str, reason: str) -> None:
    text = FULL_HEADER + (row + ",,,," if row.count(",") == 3 else row) + "\n"
    assert problems_of(text) == [(2, field, reason)]


def test_a_bad_request_id_is_refused_in_a_dry_run_too() -> None:
    text = FULL_HEADER + "a@fabrikam.example,A,partners@contoso.com,demo-hr,,,has space,\n"
    assert [p.field for p in check_text(text, dry_run=True).problems] == ["request_id"]


@pytest.mark.parametrize("field", ["display_name", "first_name", "last_name"])
@pytest.mark.parametrize("character", ["\n", "\t", "\r", "\x00", "\x85", "\u2028"])
def test_control_characters_in_names_are_refused(field: str, character: str) -> None:
    values = {"display_name": "Jordan Reyes", "first_name": "Jordan", "last_name": "Reyes"}
    values[field] = f"Jordan{character}Reyes"
    row = f'j@fabrikam.example,"{values["display_name"]}",partners@contoso.com,demo-hr,"{values["first_name"]}",'
    row += f'"{values["last_name"]}",,\n'
    assert problems_of(FULL_HEADER + row) == [(2, field, "must not contain control characters or line breaks")]


def test_check_validates_sends_nothing_and_needs_no_service_bus_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env
    for name in (SERVICEBUS_CONNECTION, f"{SERVICEBUS_CONNECTION}__fullyQualifiedNamespace"):
        monkeypatch.delenv(name, raising=False)
    clean, bad = tmp_path / "clean.csv", tmp_path / "bad.csv"
    clean.write_text(HEADER + good_row(1) + good_row(2))
    bad.write_text(HEADER + good_row(1) + "bad,,partners@contoso.com,\n")

    passed = CliRunner().invoke(app, ["bulk", str(clean), "--check"])
    assert passed.exit_code == 0, passed.output
    assert "2 row(s) valid; nothing sent" in passed.output
    refused = CliRunner().invoke(app, ["bulk", str(bad), "--check"])
    assert refused.exit_code == 2, refused.output
    assert "line 3: display_name: required" in refused.output
    assert "1 bad row(s) of 2; nothing sent" in refused.output
    empty = tmp_path / "empty.csv"
    empty.write_text(HEADER)
    assert CliRunner().invoke(app, ["bulk", str(empty), "--check"]).exit_code == 2


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
    assert (
        "Service Bus silently drops a message whose request id it saw in the last 10 minutes, "
        "so a re-run inside that window onboards nothing new." in sent.output
    )
    assert [line.split(",")[0] for line in ids.read_text().splitlines()[1:3]] == ["2", "3"]
    assert len(ids.read_text().splitlines()) == 981
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 980

    again = CliRunner().invoke(app, ["bulk", str(csv_file), "--skip-invalid"], env=env)
    assert again.exit_code == 0
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 980  # duplicate detection dropped all


@pytest.mark.stack
def test_waiting_on_a_reply_queue_that_does_not_exist_sends_nothing_and_says_so(
    servicebus_emulator: ServiceBusEmulator, tmp_path: Path
) -> None:
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(HEADER + good_row(1))
    env = {SERVICEBUS_CONNECTION: servicebus_emulator.connection_string}
    result = CliRunner().invoke(app, ["bulk", str(csv_file), "--wait", "--reply-to", "no-such-queue"], env=env)
    assert result.exit_code == 1
    assert "does not exist" in result.output and "--reply-to" in result.output
    assert asyncio.run(_queued(servicebus_emulator.connection_string)) == 0


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

    # Sent again within the duplicate-detection window: Service Bus drops every row, and --wait says
    # so at once (not after its hour-long timeout) instead of reporting the first run's outcomes as this run's.
    never = str(NEVER_SECONDS)
    again = returns(
        lambda: CliRunner().invoke(
            app, ["bulk", str(csv_file), "--skip-invalid", "--wait", "--timeout", never], env=env
        ),
        what="bulk --wait on rows sent again",
    )
    assert again.exit_code == 0, again.output
    assert "Outcomes: none" in again.output and "Not run again: 3 request(s)" in again.output


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


def test_the_request_ids_written_out_are_csv_whatever_they_hold(tmp_path: Path) -> None:
    text = FULL_HEADER + 'a@fabrikam.example,A,partners@contoso.com,demo-hr,,,"a,b",\n'
    text += 'b@fabrikam.example,B,partners@contoso.com,demo-hr,,,"x""y",\n'
    checked = check_text(text)
    write_request_ids(tmp_path / "ids.csv", checked.rows)
    with (tmp_path / "ids.csv").open(newline="") as file:
        assert [row["request_id"] for row in csv.DictReader(file)] == ["a,b", 'x"y']


# OWASP "CSV Injection": a cell starting with = + - @ tab or CR is run as a formula by spreadsheets.
FORMULAS = ['=HYPERLINK("evil.example","open")', "+1", "-2+3", "@SUM(1)"]


@pytest.mark.stack
def test_the_written_request_ids_open_in_a_spreadsheet_as_text_not_formulas(
    servicebus_emulator: ServiceBusEmulator, tmp_path: Path
) -> None:
    csv_file, ids = tmp_path / "people.csv", tmp_path / "ids.csv"
    with csv_file.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(FULL_HEADER.strip().split(","))
        for n, request_id in enumerate(FORMULAS):
            writer.writerow(
                [f"f{n}@fabrikam.example", f"F {n}", "partners@contoso.com", "demo-hr", "", "", request_id, ""]
            )
    env = {SERVICEBUS_CONNECTION: servicebus_emulator.connection_string}
    sent = CliRunner().invoke(app, ["bulk", str(csv_file), "--output", str(ids)], env=env)
    assert sent.exit_code == 0, sent.output
    with ids.open(newline="") as file:
        written = [row["request_id"] for row in csv.DictReader(file)]
    assert written == [f"'{request_id}" for request_id in FORMULAS]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=1", "a=1"),
        ("hr-2026-1", "hr-2026-1"),
        ("", ""),
    ],
)
def test_a_cell_that_would_start_a_formula_gets_a_leading_quote(value: str, cell: str) -> None:
    assert spreadsheet_cell(value) == cell


def test_a_file_with_only_its_header_is_said_to_have_no_rows(tmp_path: Path) -> None:
    csv_file = tmp_path / "empty.csv"
    csv_file.write_text(HEADER)
    result = CliRunner().invoke(app, ["bulk", str(csv_file), "--check"], env={})
    assert result.exit_code == 2
    assert "No rows below the header" in result.output


LIFECYCLE_HEADER = "external_email,display_name,group,source_system,action,expires_at\n"


def test_action_and_expires_at_columns_make_offboards_and_leases() -> None:
    text = LIFECYCLE_HEADER + (
        "a@fabrikam.example,A,partners@contoso.com,demo-hr,,2099-01-01T00:00:00Z\n"  # too far: three years at most
        "b@fabrikam.example,,partners@contoso.com,demo-hr,offboard,\n"  # an offboard needs no name
        "c@fabrikam.example,,partners@contoso.com,demo-hr,update,\n"  # an update does
        "d@fabrikam.example,D,partners@contoso.com,demo-hr,leave,\n"
        "e@fabrikam.example,E,partners@contoso.com,demo-hr,,2027-03-31 17:00\n"  # no time zone
        "f@fabrikam.example,F,partners@contoso.com,demo-hr,,2020-03-31T17:00:00Z\n"  # in the past
        "g@fabrikam.example,G,partners@contoso.com,demo-hr,offboard,2030-03-31T17:00:00Z\n"  # only an onboarding ends
    )
    checked = check_text(text)
    fields = {(p.line, p.field): p.reason for p in checked.problems}
    assert set(fields) == {
        (2, "expires_at"),
        (4, "display_name"),
        (5, "action"),
        (6, "expires_at"),
        (7, "expires_at"),
        (8, "expires_at"),
    }
    assert "more than" in fields[(2, "expires_at")] and "time zone" in fields[(6, "expires_at")]
    assert "not in the future" in fields[(7, "expires_at")] and "onboarding" in fields[(8, "expires_at")]
    assert fields[(5, "action")] == "must be offboard, onboard, update (empty: onboard)"
    (offboard,) = checked.rows
    assert offboard.request.action == "offboard" and offboard.request.display_name is None


def test_an_offboard_or_a_renewal_row_has_its_own_stable_id_and_a_plain_row_keeps_its_old_one() -> None:
    onboard = stable_request_id("a@fabrikam.example", "partners@contoso.com", "demo-hr")
    assert onboard == "bulk-" + hashlib.sha256(b"a@fabrikam.example\npartners@contoso.com\ndemo-hr").hexdigest()[:32]
    offboard = stable_request_id("a@fabrikam.example", "partners@contoso.com", "demo-hr", "offboard")
    lease = stable_request_id("a@fabrikam.example", "partners@contoso.com", "demo-hr", "onboard", "2027-03-31T17:00Z")
    renewal = stable_request_id("a@fabrikam.example", "partners@contoso.com", "demo-hr", "onboard", "2027-06-30T17:00Z")
    assert len({onboard, offboard, lease, renewal}) == 4
    soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    (row,) = check_text(LIFECYCLE_HEADER + f"a@fabrikam.example,A,partners@contoso.com,demo-hr,onboard,{soon}\n").rows
    assert row.request.expires_at is not None and row.request_id != onboard


def test_a_request_not_run_again_counts_with_its_earlier_runs_outcome_in_submit_and_bulk(
    host_in_background: LocalStack, tmp_path: Path
) -> None:
    """One rule for --wait (cli.outcomes.wait_exit_code): 0 when every request succeeded, 3 when any
    failed; a request Service Bus dropped as a duplicate counts with its earlier run's outcome."""
    csv_file = tmp_path / "two.csv"
    missing_group = "no-such-group@contoso.com"
    csv_file.write_text(HEADER + good_row(7) + f"nobody@fabrikam.example,Nobody,{missing_group},demo-hr\n")
    env = {SERVICEBUS_CONNECTION: host_in_background.environment[SERVICEBUS_CONNECTION]}

    def bulk_wait() -> Result:
        return CliRunner().invoke(app, ["bulk", str(csv_file), "--wait", "--timeout", "60"], env=env)

    first, again = bulk_wait(), bulk_wait()
    failed_id = stable_request_id("nobody@fabrikam.example", missing_group, "demo-hr")
    assert first.exit_code == 3, first.output
    assert f"line 3: {failed_id}: GroupNotFound" in first.output
    assert again.exit_code == 3, again.output  # before: 0, the earlier failure unseen
    assert "Not run again: 2 request(s)" in again.output and "(Failed 1, Succeeded 1;" in again.output
    assert f"line 3: {failed_id}: GroupNotFound (earlier run)" in again.output

    def submit_wait(email: str, group: str) -> Result:
        request_id = stable_request_id(email, group, "demo-hr")
        options = ["--email", email, "--display-name", "Someone", "--group", group, "--source-system", "demo-hr"]
        return CliRunner().invoke(
            app, ["submit", *options, "--request-id", request_id, "--wait", "--timeout", "60"], env=env
        )

    succeeded_again = submit_wait("person.7@fabrikam.example", "partners@contoso.com")
    failed_again = submit_wait("nobody@fabrikam.example", missing_group)
    assert succeeded_again.exit_code == 0, succeeded_again.output  # before: 3, though the run stood Succeeded
    assert "No new run" in succeeded_again.output and "Outcome    Succeeded" in succeeded_again.output
    assert failed_again.exit_code == 3, failed_again.output
    assert "No new run" in failed_again.output and "Failed: GroupNotFound" in failed_again.output
