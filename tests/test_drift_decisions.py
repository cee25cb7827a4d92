"""The drift watch as decisions (pure logic: hand-written fakes, an in-memory SQLite roster).

What the stages keep in the roster, what the timer and a page fan out, what a check records and reports,
and what a message on `drift` that is not a real sweep's does. End to end through the stand-ins:
tests/test_drift.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusMessage

from shared.contracts import DriftEvent, DriftFinding, DriftKind, OutcomeStatus
from shared.decisions import Finish, PassOn
from shared.directory.errors import ThrottledError
from shared.drift.events import DRIFT_SUBJECT, DRIFT_TYPE
from shared.drift.model import MembershipState, membership_key, period_id
from shared.drift.roster import RosterKeeper
from shared.drift.sweep import CHECK_MAX, DriftCheck, DriftPage, DriftSweeper, period_start, work_message
from shared.drift.watch import DriftWatch
from shared.journal import SqliteJournal
from shared.queues import DRIFT_QUEUE
from shared.stages import add_member, create_contact, verify_delivery
from tests.fakes import FakeReceivedMessage, Recorder, RecordingActions, RecordingOutbox, ScriptedGroupChecker
from tests.test_stage_decisions import NOW, World, delivery, pass_on, request_body

OUTCOMES = "onboarding-outcomes"
ROSTER_FILE = "roster.db"
REMOVED = DriftFinding(kind=DriftKind.NOT_A_MEMBER, description="Not a member any more.", fix="onboard submit")
PEOPLE = ("ana@fabrikam.example", "ben@fabrikam.example", "cy@fabrikam.example", "dee@fabrikam.example")


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def roster(tmp_path: Path) -> AsyncIterator[SqliteJournal]:
    journal = SqliteJournal(str(tmp_path / ROSTER_FILE))  # a file: a test can refuse writes with a trigger
    yield journal
    await journal.close()


async def _onboarded(world: World, **request: object) -> Finish:
    added = await add_member(await pass_on(world, request_body(**request)), delivery(), world.deps)
    assert isinstance(added, PassOn), added
    decision = await verify_delivery(added.message, delivery(), world.deps)
    assert isinstance(decision, Finish), decision
    return decision


async def test_a_finished_onboarding_is_kept_and_an_offboard_ends_it(world: World, roster: SqliteJournal) -> None:
    world.roster = RosterKeeper(roster, lambda: world.now)
    finished = await _onboarded(world)
    key = membership_key("Jordan.Reyes@fabrikam.example", world.dl.id)
    kept = await roster.membership(key)
    assert kept is not None and kept.state is MembershipState.ACTIVE and kept.verified_at == NOW
    assert kept.group == finished.outcome.group and kept.recipient == finished.outcome.recipient
    offboarded = await create_contact(request_body(action="offboard", display_name=None), delivery(), world.deps)
    assert isinstance(offboarded, Finish) and offboarded.outcome.status is OutcomeStatus.SUCCEEDED, offboarded
    ended = await roster.membership(key)
    assert ended is not None and ended.state is MembershipState.OFFBOARDED


async def test_a_dry_run_keeps_nothing(world: World, roster: SqliteJournal) -> None:
    world.roster = RosterKeeper(roster, lambda: world.now)
    planned = await create_contact(request_body(dry_run=True), delivery(), world.deps)
    assert isinstance(planned, Finish) and planned.outcome.status is OutcomeStatus.PLANNED
    assert await roster.memberships(after=None, limit=10) == []


async def test_a_roster_that_is_down_retries_an_onboarding_and_warns_an_offboard(
    world: World, roster: SqliteJournal
) -> None:
    world.roster = RosterKeeper(roster, lambda: world.now)
    await roster.close()  # the journal's storage is gone
    with pytest.raises(Exception):  # noqa: B017, PT011  # whatever the store raises: the stage runs again
        await _onboarded(world)
    offboarded = await create_contact(request_body(action="offboard", display_name=None), delivery(), world.deps)
    assert isinstance(offboarded, Finish) and offboarded.outcome.status is OutcomeStatus.SUCCEEDED_WITH_WARNINGS
    assert any("drift watch's roster" in warning for warning in offboarded.outcome.warnings)


class DescribingActions(RecordingActions):
    """Records a dead letter's description too."""

    descriptions: list[str] = []  # one list per test: reset by the fixture

    def deadletter(
        self, message: object, deadletter_reason: str | None = None, deadletter_error_description: str | None = None
    ) -> None:
        DescribingActions.descriptions.append(str(deadletter_error_description))
        super().deadletter(message, deadletter_reason, deadletter_error_description)


@dataclass
class Sweep:
    """The sweeper and the watch over one roster, and what they sent, delivered by hand."""

    world: World
    roster: SqliteJournal
    recorder: Recorder
    checker: ScriptedGroupChecker
    database: Path
    page_size: int = 2

    @property
    def sweeper(self) -> DriftSweeper:
        outbox = RecordingOutbox(self.recorder)
        return DriftSweeper(self.roster, outbox, timedelta(days=1), self.page_size, 60, lambda: self.world.now)

    @property
    def watch(self) -> DriftWatch:
        outbox = RecordingOutbox(self.recorder)
        return DriftWatch(self.roster, self.sweeper, self.checker, outbox, OUTCOMES, lambda: self.world.now)

    async def deliver(self, message: ServiceBusMessage) -> str:
        received = FakeReceivedMessage(b"".join(message.body), message_id=str(message.message_id))
        return await self.watch.run(received, RecordingActions(self.recorder))

    async def deliver_body(self, body: bytes) -> str:
        return await self.watch.run(FakeReceivedMessage(body), DescribingActions(self.recorder))

    def taken(self, queue: str) -> list[ServiceBusMessage]:
        """What was sent to `queue` since the last look (and forget it)."""
        found = [message for sent_to, message, _ in self.recorder.sent if sent_to == queue]
        self.recorder.sent = [entry for entry in self.recorder.sent if entry[0] != queue]
        return found

    async def until_quiet(self, seen: set[str] | None = None) -> list[str]:
        """Deliver every drift message sent, and those they send, as Service Bus would (duplicate
        MessageIds dropped, as within the window; `seen`: MessageIds delivered before); what each did."""
        seen = set(seen or ())
        done = []
        while pending := self.taken(DRIFT_QUEUE):
            for message in pending:
                if str(message.message_id) not in seen:
                    seen.add(str(message.message_id))
                    done.append(await self.deliver(message))
        return done

    def sweep_writes_fail(self) -> None:
        """The store refuses every write of a sweep record (a trigger in the roster's database)."""
        with sqlite3.connect(self.database) as db:
            db.execute("CREATE TRIGGER refuse_sweeps BEFORE INSERT ON sweeps BEGIN SELECT RAISE(ABORT, 'gone'); END")

    def sweep_writes_work(self) -> None:
        with sqlite3.connect(self.database) as db:
            db.execute("DROP TRIGGER refuse_sweeps")

    def events(self) -> list[DriftEvent]:
        events = []
        for message in self.taken(OUTCOMES):
            assert message.subject == DRIFT_SUBJECT and message.content_type == "application/cloudevents+json"
            event = json.loads(b"".join(message.body))
            assert event["type"] == DRIFT_TYPE and event["id"] == message.message_id
            events.append(DriftEvent.model_validate(event["data"]))
        return events


@pytest.fixture
async def sweep(world: World, roster: SqliteJournal, tmp_path: Path) -> Sweep:
    world.roster = RosterKeeper(roster, lambda: world.now)
    for person in PEOPLE[:3]:
        await _onboarded(world, external_email=person, display_name="Someone")
    await _onboarded(world, external_email=PEOPLE[3], display_name="Someone", group={"object_id": world.m365.id})
    world.now = NOW + timedelta(hours=2)
    DescribingActions.descriptions = []
    return Sweep(world, roster, Recorder(), ScriptedGroupChecker(), tmp_path / ROSTER_FILE)


async def test_a_sweep_checks_each_person_once_sharing_the_groups_and_reports_only_the_drifting(
    sweep: Sweep,
) -> None:
    sweep.checker.find(PEOPLE[1], REMOVED)
    assert await sweep.sweeper.start() == "started"
    done = await sweep.until_quiet()
    assert done.count("fanned out a page") == 2 and done.count("fanned out the last page") == 1
    assert sorted(sweep.checker.checked()) == sorted(m.key for m in await sweep.roster.memberships(after=None, limit=9))
    assert len(sweep.checker.calls) == 3  # page size 2: the first group's three people come in two checks
    (event,) = sweep.events()
    assert event.external_email == PEOPLE[1] and event.findings == (REMOVED,) and event.last_seen_right_at == NOW
    counts = await sweep.roster.counts(sweep.sweeper.current_period())
    assert counts.sweep is not None and counts.sweep.fanned_out == 4 and counts.sweep.fanned_out_at is not None
    assert (counts.active, counts.checked, counts.drifting, counts.repaired) == (4, 4, 1, 0)
    # The timer again in the same period: nothing is sent, nobody is checked again.
    assert await sweep.sweeper.start() == "fanned out already"
    assert await sweep.until_quiet() == []
    assert len(sweep.checker.calls) == 3


async def test_pages_are_spaced_to_the_rate(sweep: Sweep) -> None:
    await sweep.sweeper.start()
    (first,) = sweep.taken(DRIFT_QUEUE)
    await sweep.deliver(first)
    scheduled = [at for queue, message, at in sweep.recorder.sent if queue == DRIFT_QUEUE and at is not None]
    assert scheduled == [sweep.world.now + timedelta(minutes=2 / 60)]  # two people at 60 a minute


async def test_a_page_or_check_delivered_again_checks_nobody_twice_and_reports_once(sweep: Sweep) -> None:
    sweep.checker.find(PEOPLE[0], REMOVED)
    sweep.page_size = 10  # everyone in one page: one check per group
    await sweep.sweeper.start()
    (first_page,) = sweep.taken(DRIFT_QUEUE)
    assert await sweep.deliver(first_page) == "fanned out the last page"
    fanned = sweep.taken(DRIFT_QUEUE)
    assert await sweep.deliver(first_page) == "done already"  # the fan-out is done: a redelivery does nothing
    assert sweep.taken(DRIFT_QUEUE) == []
    check = _check_of(fanned, sweep.world.dl.id)
    assert await sweep.deliver(check) == "checked 3, reported 1"
    assert await sweep.deliver(check) == "nobody due"
    assert len(sweep.events()) == 1 and len(sweep.checker.checked()) == 3


async def test_a_page_interrupted_before_it_moved_the_cursor_does_its_page_again_with_the_same_ids(
    sweep: Sweep,
) -> None:
    await sweep.sweeper.start()
    (first_page,) = sweep.taken(DRIFT_QUEUE)
    sweep.sweep_writes_fail()  # the host dies after the checks went out, before the cursor moved
    with pytest.raises(sqlite3.IntegrityError):
        await sweep.deliver(first_page)
    assert "abandon" in sweep.recorder.kinds()
    before = sweep.taken(DRIFT_QUEUE)
    assert before and all(json.loads(b"".join(m.body))["kind"] == "check" for m in before), "no early next page"
    sweep.sweep_writes_work()
    assert await sweep.deliver(first_page) == "fanned out a page"
    again = [str(message.message_id) for message in sweep.taken(DRIFT_QUEUE)]
    assert again[: len(before)] == [str(m.message_id) for m in before]  # Service Bus drops these within its window


async def test_a_page_interrupted_after_it_moved_the_cursor_sends_its_next_page_when_delivered_again(
    sweep: Sweep,
) -> None:
    await sweep.sweeper.start()
    (first_page,) = sweep.taken(DRIFT_QUEUE)
    sweep.recorder.failing.add("schedule")  # the cursor moved; the host dies before the next page is sent
    with pytest.raises(RuntimeError):
        await sweep.deliver(first_page)
    checks = {str(message.message_id) for message in sweep.taken(DRIFT_QUEUE)}
    sweep.recorder.failing.clear()
    assert await sweep.deliver(first_page) == "sent its next page again"
    done = await sweep.until_quiet(seen=checks)  # the checks went out before the host died
    assert done.count("fanned out the last page") == 1
    counts = await sweep.roster.counts(sweep.sweeper.current_period())
    assert counts.sweep is not None and counts.sweep.fanned_out == counts.active == 4


async def test_findings_still_open_in_a_later_period_are_not_reported_again_and_clear_silently(
    sweep: Sweep,
) -> None:
    sweep.checker.find(PEOPLE[2], REMOVED)
    await sweep.sweeper.start()
    await sweep.until_quiet()
    assert len(sweep.events()) == 1
    sweep.world.now += timedelta(days=1)
    await sweep.sweeper.start()
    await sweep.until_quiet()
    assert sweep.events() == []  # still open: `onboard drift` lists it
    (drifting,) = await sweep.roster.drifting()
    assert drifting.drifting_since == NOW + timedelta(hours=2)
    sweep.checker.find(PEOPLE[2])  # put right
    sweep.world.now += timedelta(days=1)
    await sweep.sweeper.start()
    await sweep.until_quiet()
    assert sweep.events() == [] and await sweep.roster.drifting() == []


async def test_a_throttled_check_records_nothing_and_comes_back(sweep: Sweep) -> None:
    sweep.page_size = 10
    await sweep.sweeper.start()
    (first_page,) = sweep.taken(DRIFT_QUEUE)
    await sweep.deliver(first_page)
    check = _check_of(sweep.taken(DRIFT_QUEUE), sweep.world.dl.id)
    sweep.checker.failure = ThrottledError("Too many requests", face="graph", status=429, retry_after=30)
    with pytest.raises(ThrottledError):
        await sweep.deliver(check)
    assert sweep.recorder.kinds()[-1] == "abandon"
    assert (await sweep.roster.counts(sweep.sweeper.current_period())).checked == 0
    sweep.checker.failure = None
    assert await sweep.deliver(check) == "checked 3, reported 0"


async def test_an_offboarded_person_is_not_checked(sweep: Sweep, world: World) -> None:
    world.now = NOW
    await create_contact(
        request_body(action="offboard", display_name=None, external_email=PEOPLE[0]), delivery(), world.deps
    )
    world.now = NOW + timedelta(hours=2)
    await sweep.sweeper.start()
    await sweep.until_quiet()
    assert membership_key(PEOPLE[0], world.dl.id) not in sweep.checker.checked()
    assert len(sweep.checker.checked()) == 3


def _check_of(messages: list[ServiceBusMessage], group_id: str) -> ServiceBusMessage:
    (check,) = [
        m for m in messages if json.loads(b"".join(m.body)) == json.loads(b"".join(m.body)) | {"group": group_id}
    ]
    return check


def _check(sweep: Sweep, group: str, keys: list[str], period: str | None = None) -> bytes:
    body = {"kind": "check", "period": period or sweep.sweeper.current_period(), "group": group, "keys": keys}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"kind": "wipe", "period": "20261207T000000Z"}', "kind"),
        (b'{"kind": "page", "period": "yesterday"}', "period"),
        (b'{"kind": "page", "period": "20261207T000000Z", "after": null, "extra": 1}', "extra"),
    ],
)
async def test_a_message_that_is_not_drift_work_is_dead_lettered_with_its_reason(
    sweep: Sweep, body: bytes, said: str
) -> None:
    assert await sweep.deliver_body(body) == "refused"
    assert sweep.recorder.events[-1] == ("deadletter", "InvalidRequest")
    (description,) = DescribingActions.descriptions
    assert description.startswith("not a drift page or check: ") and said in description, description
    assert sweep.checker.calls == []


async def test_a_check_of_another_groups_keys_or_of_too_many_is_dead_lettered(sweep: Sweep, world: World) -> None:
    await sweep.sweeper.start()
    other = membership_key(PEOPLE[3], world.m365.id)
    assert await sweep.deliver_body(_check(sweep, world.dl.id, [other])) == "refused"
    many = [membership_key(f"p{n}@fabrikam.example", world.dl.id) for n in range(10_000)]
    assert await sweep.deliver_body(_check(sweep, world.dl.id, many)) == "refused"
    assert await sweep.deliver_body(_check(sweep, world.dl.id, many[: CHECK_MAX + 1])) == "refused"
    assert [event for event in sweep.recorder.events if event[0] == "deadletter"] == [
        ("deadletter", "InvalidRequest")
    ] * 3
    other_group, too_many, one_too_many = DescribingActions.descriptions
    assert "of the message's group" in other_group
    assert "at most 100 items" in too_many and "at most 100 items" in one_too_many
    assert sweep.checker.calls == []


async def test_a_forged_page_or_check_does_no_more_than_the_sweep_would(sweep: Sweep, world: World) -> None:
    key = membership_key(PEOPLE[0], world.dl.id)
    yesterday = period_id(period_start(world.now - timedelta(days=1), timedelta(days=1)))
    current = sweep.sweeper.current_period()
    # Before the timer started a sweep: a page or a check of the current period does nothing.
    assert await sweep.deliver_body(_check(sweep, world.dl.id, [key])) == "no sweep started"
    page = DriftPage(kind="page", period=current)
    assert await sweep.deliver(work_message(page)) == "no sweep started"
    await sweep.sweeper.start()
    sweep.taken(DRIFT_QUEUE)
    # Another period's work, or a page at a cursor the sweep is not at, does nothing either.
    assert await sweep.deliver_body(_check(sweep, world.dl.id, [key], yesterday)) == "not the current period"
    assert await sweep.deliver(work_message(DriftPage(kind="page", period=yesterday))) == "not the current period"
    assert await sweep.deliver(work_message(DriftPage(kind="page", period=current, after=key))) == "done already"
    # A check of the current sweep checks its people once: the sweep's own check then finds nobody due.
    forged = DriftCheck(kind="check", period=current, group=world.dl.id, keys=(key,))
    assert await sweep.deliver(work_message(forged)) == "checked 1, reported 0"
    assert await sweep.deliver(work_message(forged)) == "nobody due"
    assert sweep.checker.checked() == [key]
    assert "complete" in sweep.recorder.kinds()
