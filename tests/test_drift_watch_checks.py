"""The drift checks on the real path: people onboarded through the pipeline (emulator, local host running
function_app.py, tenant sandbox), each condition then broken in the sandbox as an administrator or a policy
would, and the checker run with the project's own Graph (msgraph-sdk) and Exchange clients over HTTP.
Pure decisions: tests/test_drift_checks.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.contracts import (
    DriftFinding,
    DriftKind,
    GroupKind,
    OnboardingRequest,
    OutcomeEvent,
    Recipient,
    RecipientKind,
)
from shared.contracts import ResolvedGroup as Group
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from shared.drift.checks import DirectoryGroupChecker
from shared.drift.model import Membership, membership_key
from shared.policy import OnboardingPolicy
from shared.provenance import CONTACT_ATTRIBUTE, stamp
from standins.local_app import app_credential, grant_local_app
from standins.stack import LocalStack
from standins.tenant_sandbox import TenantSandbox, TenantSeed
from standins.tenant_sandbox.model import Directory
from tests.fixtures.pipeline import Readback, onboard
from tools.demo import DEMO_POLICY, demo_request

pytestmark = pytest.mark.stack

PARTNERS = "partners@contoso.com"  # distribution group; the policy allows the 5.7.133 fix
SUPPLIERS = "suppliers-secure@contoso.com"  # mail-enabled security group; the policy does not
FALCON = "project-falcon@contoso.com"  # Microsoft 365 group; the policy allows the fix
CONTACT_CHANGES = ("untouched", "removed", "hidden", "unstamped", "deleted")
GUEST_CHANGES = ("untouched", "removed", "disabled", "unsubscribed", "deleted")
EXPECTED = {
    "untouched": [],
    "removed": [DriftKind.NOT_A_MEMBER],
    "hidden": [DriftKind.RECIPIENT_HIDDEN],
    "unstamped": [DriftKind.RECIPIENT_NOT_OURS],
    "deleted": [DriftKind.RECIPIENT_MISSING],
    "disabled": [DriftKind.GUEST_DISABLED],
    "unsubscribed": [DriftKind.NOT_SUBSCRIBED],
}


def membership_of(request: OnboardingRequest, outcome: OutcomeEvent) -> Membership:
    """What the roster keeps of a finished onboarding (part A's roster builds the same from the outcome)."""
    assert outcome.group is not None and outcome.recipient is not None, outcome
    address = str(request.external_email)
    return Membership(
        key=membership_key(address, outcome.group.id),
        external_email=address,
        display_name=request.display_name or address,
        group=outcome.group,
        recipient=outcome.recipient,
        allow_external_senders=request.allow_external_senders,
        source_system=request.source_system,
        request_id=outcome.request_id,
        correlation_id=outcome.request_id,
        verified_at=outcome.finished_at,
        last_seen_right_at=outcome.finished_at,
        updated_at=outcome.finished_at,
    )


async def onboarded(stack: LocalStack, people: dict[str, tuple[str, str]]) -> dict[str, Membership]:
    """Onboard each (address, group) through the pipeline; their memberships by name."""
    requests = {
        name: demo_request(f"drift-{name}", address, f"Person {name.title()}", group)
        for name, (address, group) in people.items()
    }
    outcomes = await onboard(stack, list(requests.values()), within_seconds=120)
    return {name: membership_of(request, outcomes[str(request.request_id)]) for name, request in requests.items()}


def kinds(findings: tuple[DriftFinding, ...]) -> list[DriftKind]:
    return [finding.kind for finding in findings]


def break_contact(directory: Directory, person: Membership, change: str) -> None:
    contact = directory.contact_by_identity(person.recipient.id)
    group = directory.group_by_identity(person.group.id)
    assert contact is not None and group is not None
    if change == "removed":
        directory.remove_member(group, contact.external_directory_object_id)
    elif change == "hidden":
        directory.hide_contact(contact)
    elif change == "unstamped":
        with directory.lock:  # an administrator reuses CustomAttribute15 for something else
            contact.custom_attributes[CONTACT_ATTRIBUTE] = "cost centre 4711"
            directory.update_contact(contact)
    elif change == "deleted":
        directory.remove_contact(contact)


def break_guest(directory: Directory, person: Membership, change: str) -> None:
    user = directory.users[person.recipient.id]
    group = directory.group_by_identity(person.group.id)
    assert group is not None
    if change == "removed":
        directory.remove_member(group, user.id)
    elif change == "disabled":
        directory.set_account_enabled(user, False)
    elif change == "unsubscribed":
        directory.unsubscribe(group, user.id)
    elif change == "deleted":
        directory.remove_user(user)


@pytest.fixture
def checker(readback: Readback) -> DirectoryGroupChecker:
    return DirectoryGroupChecker(readback.graph, readback.exchange, OnboardingPolicy.load(DEMO_POLICY))


async def test_each_broken_condition_is_seen_and_sender_authentication_repaired_where_allowed(
    stack: LocalStack, readback: Readback, checker: DirectoryGroupChecker
) -> None:
    people = {f"c-{change}": (f"drift.c.{change}@fabrikam.example", PARTNERS) for change in CONTACT_CHANGES}
    people |= {f"g-{change}": (f"drift.g.{change}@tailspin.example", FALCON) for change in GUEST_CHANGES}
    people["secure"] = ("drift.secure@fabrikam.example", SUPPLIERS)
    members = await onboarded(stack, people)
    directory = stack.sandbox.directory
    contacts = {change: members[f"c-{change}"] for change in CONTACT_CHANGES}
    guests = {change: members[f"g-{change}"] for change in GUEST_CHANGES}
    assert {m.recipient.kind for m in contacts.values()} == {RecipientKind.MAIL_CONTACT}
    assert {m.recipient.kind for m in guests.values()} == {RecipientKind.GUEST_USER}

    # Nothing broken yet: nothing found, in any kind of group.
    for group_members in (list(contacts.values()), list(guests.values()), [members["secure"]]):
        assert set(await checker(group_members[0].group, group_members)) == {m.key for m in group_members}
        assert all(found == () for found in (await checker(group_members[0].group, group_members)).values())

    for change, person in contacts.items():
        break_contact(directory, person, change)
    for change, person in guests.items():
        break_guest(directory, person, change)
    found = await checker(contacts["untouched"].group, list(contacts.values()))
    assert {change: kinds(found[person.key]) for change, person in contacts.items()} == {
        change: EXPECTED[change] for change in CONTACT_CHANGES
    }
    found = await checker(guests["untouched"].group, list(guests.values()))
    assert {change: kinds(found[person.key]) for change, person in guests.items()} == {
        change: EXPECTED[change] for change in GUEST_CHANGES
    }

    # 5.7.133 again: repaired where the policy allows (the group accepts external mail again), else reported.
    for mail in (PARTNERS, FALCON, SUPPLIERS):
        group = directory.group_by_identity(mail)
        assert group is not None
        directory.change_sender_rules(group, require_sender_authentication=True)
    for person, repaired in ((contacts["untouched"], True), (guests["untouched"], True), (members["secure"], False)):
        (finding,) = (await checker(person.group, [person]))[person.key]
        assert (finding.kind, finding.repaired) == (DriftKind.SENDER_AUTHENTICATION_REQUIRED, repaired)
        unified = person.group.kind is GroupKind.MICROSOFT_365
        restrictions = await readback.exchange.get_sender_restrictions(person.group.mail, unified=unified)
        assert restrictions.require_sender_authentication is not repaired
        assert (await checker(person.group, [person]))[person.key] == ((finding,) if not repaired else ())


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("members-only", DriftKind.SENDERS_RESTRICTED),
        ("rejected", DriftKind.SENDER_REJECTED),
        ("moderated", DriftKind.MODERATED),
    ],
)
async def test_sender_rules_that_leave_the_person_out_are_seen(
    stack: LocalStack, readback: Readback, checker: DirectoryGroupChecker, rule: str, expected: DriftKind
) -> None:
    members = await onboarded(
        stack,
        {"contact": ("drift.rules@fabrikam.example", PARTNERS), "guest": ("drift.rules@tailspin.example", FALCON)},
    )
    directory = stack.sandbox.directory
    for person in members.values():
        group = directory.group_by_identity(person.group.id)
        assert group is not None
        rules: dict[str, dict[str, object]] = {
            "members-only": {"accept_messages_only_from": ["adele.vance@contoso.com"]},
            "rejected": {"reject_messages_from": [person.external_email]},
            "moderated": {"moderation_enabled": True},
        }
        changes = rules[rule]
        directory.change_sender_rules(group, **changes)
        (finding,) = (await checker(person.group, [person]))[person.key]
        assert finding.kind is expected and not finding.repaired


# --- calls shared by the people of one group --------------------------------------------------

PEOPLE = 50


@pytest.fixture
def tenant_with_people() -> Iterator[tuple[TenantSandbox, list[Membership]]]:
    """A distribution group with PEOPLE mail contacts the app made, and 2,000 staff (two Exchange pages)."""
    with TenantSandbox(TenantSeed.demo().with_staff_in(PARTNERS, 2000)) as sandbox:
        directory = sandbox.directory
        group = directory.group_by_identity(PARTNERS)
        assert group is not None
        resolved = Group(id=group.id, display_name=group.display_name, mail=PARTNERS, kind=GroupKind.DISTRIBUTION)
        people: list[Membership] = []
        for n in range(PEOPLE):
            address = f"person.{n}@fabrikam.example"
            contact = directory.add_contact(f"Person {n}", f"Person {n}", address, None, None)
            contact.custom_attributes[CONTACT_ATTRIBUTE] = stamp(f"req-{n}")
            directory.update_contact(contact)
            directory.add_member(group, contact.external_directory_object_id)
            recipient = Recipient(
                kind=RecipientKind.MAIL_CONTACT,
                id=contact.guid,
                created=True,
                directory_object_id=contact.external_directory_object_id,
            )
            people.append(_membership(address, resolved, recipient))
        directory.change_sender_rules(group, require_sender_authentication=False)
        yield sandbox, people


def _membership(address: str, group: Group, recipient: Recipient) -> Membership:
    at = datetime.now(UTC)
    return Membership(
        key=membership_key(address, group.id),
        external_email=address,
        display_name=address,
        group=group,
        recipient=recipient,
        allow_external_senders=True,
        source_system="demo-hr",
        request_id="req",
        correlation_id="req",
        verified_at=at,
        last_seen_right_at=at,
        updated_at=at,
    )


async def test_a_group_of_fifty_people_is_checked_in_far_fewer_calls_than_people(
    tenant_with_people: tuple[TenantSandbox, list[Membership]],
) -> None:
    sandbox, people = tenant_with_people
    grant_local_app(sandbox)
    credential = app_credential(sandbox)
    graph = MsGraphDirectory(credential, base_url=sandbox.graph_base_url)
    exchange = ExchangeOnlineClient(credential, tenant_id=sandbox.tenant_id, base_url=sandbox.exchange_base_url)
    try:
        checker = DirectoryGroupChecker(graph, exchange, OnboardingPolicy.load(DEMO_POLICY))
        sandbox.request_log.clear()
        found = await checker(people[0].group, people)
        calls = len(sandbox.request_log)
        # One person removed: only they cost calls of their own.
        group = sandbox.directory.group_by_identity(PARTNERS)
        contact = sandbox.directory.contact_by_identity(people[7].recipient.id)
        assert group is not None and contact is not None
        sandbox.directory.remove_member(group, contact.external_directory_object_id)
        sandbox.request_log.clear()
        after = await checker(people[0].group, people)
        calls_after = len(sandbox.request_log)
    finally:
        await graph.close()
        await exchange.close()
    assert found == {person.key: () for person in people}
    assert [p.key for p in people if after[p.key]] == [people[7].key]
    assert kinds(after[people[7].key]) == [DriftKind.NOT_A_MEMBER]
    # The group, its sender settings, and its 2,050 members in three pages: 5 calls for 50 people.
    assert calls == 5, sandbox.request_log.entries()
    assert calls_after == calls + 1  # the removed person's own look-up (Get-MailContact)
