"""The drift watch end to end (docs/drift.md): the real SDK, the emulator, the tenant sandbox and the local host
running function_app.py, with a scripted group checker handed to the app in place of the real checks.

The sweep is fired as its timer would be (`run_timer`); nothing here times the app: each test waits for
what it expects (outcomes, the roster's counts, the drift queue drained) and checks what arrived.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from cli.upstream import submit
from functions.triggers import DRIFT_SWEEP_FUNCTION
from shared.contracts import DriftEvent, DriftFinding, DriftKind, OnboardingRequest, OutcomeEvent, OutcomeStatus
from shared.drift.events import DRIFT_SUBJECT, DRIFT_TYPE
from shared.drift.model import MembershipState, membership_key, period_id
from shared.drift.sweep import DriftCheck, DriftPage, period_start, work_message
from shared.journal import SqliteJournal
from shared.outbox import peeked
from shared.queues import DRIFT_QUEUE
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import LocalStack, local_stack, running_host
from tests.fakes import ScriptedGroupChecker
from tests.fixtures.pipeline import OUTCOMES
from tests.samples import PARTNERS, sample_request
from tests.waiting import HANG_GUARD_SECONDS

pytestmark = pytest.mark.stack

STAYS, DRIFTS = "ana.silva@fabrikam.example", "ben.okafor@fabrikam.example"
REMOVED = DriftFinding(kind=DriftKind.NOT_A_MEMBER, description="Removed from the group.", fix="onboard submit ...")
DAY = timedelta(days=1)


class Arrivals:
    """What arrives on the outcome queue: outcome events and drift events, told apart by subject."""

    def __init__(self, client: ServiceBusClient) -> None:
        self.client = client
        self.outcomes: list[OutcomeEvent] = []
        self.drift: list[DriftEvent] = []

    async def receive(self, max_wait_time: float) -> int:
        async with self.client.get_queue_receiver(OUTCOMES) as receiver:
            batch = await receiver.receive_messages(max_message_count=50, max_wait_time=max_wait_time)
            for message in batch:
                body = json.loads(b"".join(message.body))
                if message.subject == DRIFT_SUBJECT:
                    assert body["type"] == DRIFT_TYPE and body["id"] == message.message_id
                    self.drift.append(DriftEvent.model_validate(body["data"]))
                else:
                    self.outcomes.append(OutcomeEvent.model_validate(body))
                await receiver.complete_message(message)
        return len(batch)

    async def outcome(self, request_id: str) -> OutcomeEvent:
        await until(lambda: self._has(request_id), f"the outcome of {request_id}")
        return next(o for o in self.outcomes if o.request_id == request_id)

    async def _has(self, request_id: str) -> bool:
        await self.receive(1)
        return any(o.request_id == request_id for o in self.outcomes)

    async def settle(self) -> None:
        """Everything that arrives until nothing has for a few seconds (anything that would be a second event)."""
        while await self.receive(3):
            pass


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(int(HANG_GUARD_SECONDS)):  # a guard against hanging, not a timing
        if await condition():
            return
        await asyncio.sleep(1)
    raise AssertionError(f"not within {HANG_GUARD_SECONDS:.0f} s: {what}")


async def drift_queue_drained(client: ServiceBusClient) -> bool:
    async with client.get_queue_receiver(DRIFT_QUEUE) as receiver:
        async for _ in peeked(receiver):
            return False
    return True


def current_period() -> str:
    return period_id(period_start(datetime.now(UTC), DAY))


async def roster_of(stack: LocalStack) -> SqliteJournal:
    return SqliteJournal(str(stack.journal_database))


async def checked_in_period(stack: LocalStack, period: str) -> int:
    roster = await roster_of(stack)
    try:
        return (await roster.counts(period)).checked
    finally:
        await roster.close()


async def test_a_sweep_checks_each_onboarded_person_once_reports_the_drifting_and_resumes_without_doubles() -> None:
    checker = ScriptedGroupChecker()
    checker.find(DRIFTS, REMOVED)
    with local_stack() as stack:
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            running_host(stack.environment, adapters={"drift_checker": checker}) as host,
        ):
            arrivals = Arrivals(client)
            await submit(client, [sample_request("drift-1", STAYS, "Ana Silva", PARTNERS)])
            await submit(client, [sample_request("drift-2", DRIFTS, "Ben Okafor", PARTNERS)])
            for request_id in ("drift-1", "drift-2"):
                outcome = await arrivals.outcome(request_id)
                assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
            assert outcome.group is not None
            group = outcome.group
            roster = await roster_of(stack)
            try:
                kept = await roster.memberships(after=None, limit=10)
            finally:
                await roster.close()
            keys = {membership_key(STAYS, group.id), membership_key(DRIFTS, group.id)}
            assert {m.key for m in kept} == keys and all(m.state is MembershipState.ACTIVE for m in kept)

            period = current_period()
            await host.run_timer(DRIFT_SWEEP_FUNCTION)
            await until(lambda: _checked(stack, period, 2), "both people checked")
            await until(lambda: drift_queue_drained(client), "the drift queue drained")
            await arrivals.settle()
            (event,) = arrivals.drift
            assert event.external_email == DRIFTS and event.findings == (REMOVED,) and event.request_id == "drift-2"
            assert checker.calls == [(group.id, tuple(sorted(keys)))]  # one check for the group's two people

            # The timer again in the same period, then a page and a check delivered again (past the
            # duplicate-detection window: other MessageIds): nobody is checked twice, nothing reported twice.
            await host.run_timer(DRIFT_SWEEP_FUNCTION)
            again: list[DriftPage | DriftCheck] = [
                DriftPage(kind="page", period=period),
                DriftCheck(kind="check", period=period, group=group.id.lower(), keys=tuple(sorted(keys))),
            ]
            async with client.get_queue_sender(DRIFT_QUEUE) as sender:
                for work in again:
                    message = work_message(work)
                    await sender.send_messages(
                        ServiceBusMessage(b"".join(message.body), message_id=f"{message.message_id}/again")
                    )
            await until(lambda: drift_queue_drained(client), "the drift queue drained again")
            await arrivals.settle()
            assert len(arrivals.drift) == 1 and len(checker.calls) == 1

            # An offboard takes the person out of the roster.
            offboard = OnboardingRequest.model_validate(
                {"action": "offboard", "external_email": DRIFTS, "group": {"smtp_address": PARTNERS}}
                | {"source_system": "demo-hr", "request_id": "drift-2-leaves"}
            )
            await submit(client, [offboard])
            left = await arrivals.outcome("drift-2-leaves")
            assert left.status is OutcomeStatus.SUCCEEDED, left
        roster = await roster_of(stack)
        try:
            assert [m.key for m in await roster.memberships(after=None, limit=10)] == [membership_key(STAYS, group.id)]
            assert await roster.drifting() == []  # an offboarded membership's findings are not open
        finally:
            await roster.close()


async def _checked(stack: LocalStack, period: str, count: int) -> bool:
    return await checked_in_period(stack, period) == count


async def test_hostile_messages_on_drift_end_in_one_dead_letter_or_nothing_each() -> None:
    checker = ScriptedGroupChecker()
    group = "7c1d2e3f-0003-4b5c-8d9e-0f1a2b3c4d03"
    other_group = "1a2b3c4d-0001-4b5c-8d9e-0f1a2b3c4d01"
    yesterday = period_id(period_start(datetime.now(UTC) - DAY, DAY))
    foreign = DriftCheck(kind="check", period=yesterday, group=group, keys=(membership_key(STAYS, group),))
    # 3,000 keys, about as many as fit in a message of the Standard tier's 256 KB (10,000 do not: the
    # broker refuses them, tests/test_drift_decisions.py reads them); the contract allows 100.
    many = [membership_key(f"p{n}@fabrikam.example", group) for n in range(3000)]
    hostile = {
        "not JSON": b"\x00\xff not json",
        "wrong shape": json.dumps({"kind": "sweep-everyone", "period": current_period()}).encode(),
        "another group's keys": json.dumps(
            {"kind": "check", "period": current_period(), "group": group, "keys": [membership_key(STAYS, other_group)]}
        ).encode(),
        "too many keys": json.dumps(
            {"kind": "check", "period": current_period(), "group": group, "keys": many}
        ).encode(),
    }
    with local_stack() as stack:
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            running_host(stack.environment, adapters={"drift_checker": checker}),
        ):
            async with client.get_queue_sender(DRIFT_QUEUE) as sender:
                for name, body in hostile.items():
                    await sender.send_messages(ServiceBusMessage(body, message_id=name.replace(" ", "-")))
                await sender.send_messages(work_message(foreign))  # a period that is not the current one
            await until(lambda: drift_queue_drained(client), "the drift queue drained")
            async with client.get_queue_receiver(DRIFT_QUEUE, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
                dead = list(await dlq.peek_messages(max_message_count=50))
    assert sorted(str(message.message_id) for message in dead) == sorted(name.replace(" ", "-") for name in hostile)
    for message in dead:
        assert message.dead_letter_reason == "InvalidRequest"
        assert (message.dead_letter_error_description or "").startswith("not a drift page or check: ")
    assert checker.calls == []  # the foreign period's check was completed, doing nothing


async def test_a_sweep_in_pages_schedules_each_next_page_and_ends_its_fan_out() -> None:
    checker = ScriptedGroupChecker()
    people = [("cy.lin@fabrikam.example", "Cy Lin"), ("dee.ross@fabrikam.example", "Dee Ross"), (STAYS, "Ana Silva")]
    # One person a page, the next page 0.6 s later: three scheduled pages through the broker.
    pages = {"ONBOARDING_DRIFT_PAGE_SIZE": "1", "ONBOARDING_DRIFT_PER_MINUTE": "100"}
    with local_stack(settings=pages) as stack:
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            running_host(stack.environment, adapters={"drift_checker": checker}) as host,
        ):
            arrivals = Arrivals(client)
            for n, (person, name) in enumerate(people):
                await submit(client, [sample_request(f"pages-{n}", person, name, PARTNERS)])
            for n in range(len(people)):
                assert (await arrivals.outcome(f"pages-{n}")).status is OutcomeStatus.SUCCEEDED
            period = current_period()
            await host.run_timer(DRIFT_SWEEP_FUNCTION)
            await until(lambda: _fanned_out(stack, period), "the fan-out done")
            await until(lambda: _checked(stack, period, len(people)), "everyone checked")
        roster = await roster_of(stack)
        try:
            sweep = await roster.sweep(period)
        finally:
            await roster.close()
    assert sweep is not None and (sweep.pages, sweep.fanned_out) == (len(people) + 1, len(people))
    assert [len(keys) for _, keys in checker.calls] == [1, 1, 1]  # one check a page, each person once
    assert len(set(checker.checked())) == len(people)


async def _fanned_out(stack: LocalStack, period: str) -> bool:
    roster = await roster_of(stack)
    try:
        sweep = await roster.sweep(period)
    finally:
        await roster.close()
    return sweep is not None and sweep.fanned_out_at is not None


async def test_the_apps_own_checks_report_a_removal_and_repair_sender_authentication_where_the_policy_allows() -> None:
    """No scripted checker: the app's checks (shared/drift/checks.py) against the sandbox, after an administrator
    removed one person from Partners and turned sender authentication back on for it (the policy allows the fix
    there). The removed person is reported; the other is repaired, and the group accepts external mail again."""
    with local_stack() as stack:
        async with (
            ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client,
            running_host(stack.environment) as host,
        ):
            arrivals = Arrivals(client)
            await submit(client, [sample_request("own-1", STAYS, "Ana Silva", PARTNERS)])
            await submit(client, [sample_request("own-2", DRIFTS, "Ben Okafor", PARTNERS)])
            for request_id in ("own-1", "own-2"):
                assert (await arrivals.outcome(request_id)).status is OutcomeStatus.SUCCEEDED
            directory = stack.sandbox.directory
            partners = directory.group_by_identity(PARTNERS)
            assert partners is not None
            removed = next(c for c in directory.contacts.values() if c.external_email_address.lower() == DRIFTS)
            directory.remove_member(partners, removed.external_directory_object_id)
            directory.change_sender_rules(partners, require_sender_authentication=True)

            period = current_period()
            await host.run_timer(DRIFT_SWEEP_FUNCTION)
            await until(lambda: _checked(stack, period, 2), "both people checked")
            await until(lambda: drift_queue_drained(client), "the drift queue drained")
            await arrivals.settle()
        repaired = directory.group_by_identity(PARTNERS)
        roster = await roster_of(stack)
        try:
            drifting = await roster.drifting()
        finally:
            await roster.close()
    found = {event.external_email: {(f.kind, f.repaired) for f in event.findings} for event in arrivals.drift}
    assert found[STAYS] == {(DriftKind.SENDER_AUTHENTICATION_REQUIRED, True)}, arrivals.drift
    assert (DriftKind.NOT_A_MEMBER, False) in found[DRIFTS], arrivals.drift
    assert len(arrivals.drift) == 2  # one event a person
    assert repaired is not None and not repaired.require_sender_authentication  # once for the group
    assert [m.external_email for m in drifting] == [DRIFTS]  # a repaired finding is not open; a removal is
