"""The drift checks' decisions over hand-written fake directories (pure logic); the real path is in
tests/test_drift_watch_checks.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.contracts import DriftKind, GroupKind, Recipient, RecipientKind, ResolvedGroup
from shared.directory.errors import NotFoundError, ThrottledError
from shared.directory.ports import DirectoryGroup, DirectoryUser, MailContact, SenderRestrictions
from shared.drift.checks import DirectoryGroupChecker, group_checker
from shared.drift.model import GroupChecker, Membership, membership_key
from shared.policy import OnboardingPolicy
from shared.provenance import stamp
from shared.retry import RetryPolicy
from shared.stages.dependencies import StageDependencies
from tests.fakes import FailureScript, FakeExchange, FakeGraph

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
OPEN = SenderRestrictions(False, (), (), False)


def _policy(*, fix_allowed: bool) -> OnboardingPolicy:
    return OnboardingPolicy.model_validate(
        {
            "sources": {"hr": {"allowed_groups": ["*"]}},
            "sender_authentication_fix_allowed": ["*"] if fix_allowed else [],
        }
    )


class Tenant:
    def __init__(self, *, fix_allowed: bool = True) -> None:
        self.script = FailureScript()
        self.graph = FakeGraph(self.script)
        self.exchange = FakeExchange(self.script)
        self.graph.exchange = self.exchange
        self.checker = DirectoryGroupChecker(self.graph, self.exchange, _policy(fix_allowed=fix_allowed))
        self.dl = self.graph.add_group(GroupKind.DISTRIBUTION, "partners@contoso.com")
        self.m365 = self.graph.add_group(GroupKind.MICROSOFT_365, "falcon@contoso.com")
        for group in (self.dl, self.m365):
            assert group.mail is not None
            self.exchange.restrictions[group.mail] = OPEN

    def contact_in_dl(self, n: int, *, created: bool = True, allow_senders: bool = True) -> Membership:
        address = f"person{n}@fabrikam.example"
        contact = MailContact(f"guid-{n}", f"Person {n}", address, f"entra-{n}", stamp(f"req-{n}") if created else None)
        self.exchange.contacts[contact.identity] = contact
        self.exchange.members[str(self.dl.mail)].add(contact.identity)
        recipient = Recipient(
            kind=RecipientKind.MAIL_CONTACT, id=contact.identity, created=created, directory_object_id=f"entra-{n}"
        )
        return _membership(self.dl, address, recipient, allow_senders)

    def guest_in_m365(self, n: int, *, allow_senders: bool = True) -> Membership:
        address = f"guest{n}@tailspin.example"
        user = DirectoryUser(f"user-{n}", address, "Guest")
        self.graph.users[user.id] = user
        self.graph.members[self.m365.id].add(user.id)
        self.exchange.subscribers[str(self.m365.mail)].add(user.id)
        recipient = Recipient(kind=RecipientKind.GUEST_USER, id=user.id, created=True, directory_object_id=user.id)
        return _membership(self.m365, address, recipient, allow_senders)

    def restrict(self, group: DirectoryGroup, **changes: object) -> None:
        assert group.mail is not None
        self.exchange.restrictions[group.mail] = replace(self.exchange.restrictions[group.mail], **changes)  # type: ignore[arg-type]


def _membership(group: DirectoryGroup, address: str, recipient: Recipient, allow_senders: bool) -> Membership:
    assert group.mail is not None
    resolved = ResolvedGroup(id=group.id, display_name=group.display_name, mail=group.mail, kind=group.kind)
    return Membership(
        key=membership_key(address, group.id),
        external_email=address,
        display_name="Someone",
        group=resolved,
        recipient=recipient,
        allow_external_senders=allow_senders,
        source_system="hr",
        request_id="req",
        correlation_id="req",
        verified_at=NOW,
        last_seen_right_at=NOW,
        updated_at=NOW,
    )


def kinds(found: tuple[object, ...]) -> list[DriftKind]:
    return [finding.kind for finding in found]  # type: ignore[attr-defined]


async def test_people_as_onboarded_have_no_findings() -> None:
    tenant = Tenant()
    people = [tenant.contact_in_dl(1), tenant.contact_in_dl(2, created=False)]
    found = await tenant.checker(people[0].group, people)
    assert found == {person.key: () for person in people}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("removed", [DriftKind.NOT_A_MEMBER]),
        ("deleted", [DriftKind.RECIPIENT_MISSING]),
        ("hidden", [DriftKind.RECIPIENT_HIDDEN]),
        ("unstamped", [DriftKind.RECIPIENT_NOT_OURS]),
    ],
)
async def test_each_change_to_a_contact_is_its_finding(change: str, expected: list[DriftKind]) -> None:
    tenant = Tenant()
    person = tenant.contact_in_dl(1)
    contact = tenant.exchange.contacts[person.recipient.id]
    if change == "removed":
        tenant.exchange.members[person.group.mail].discard(contact.identity)
    elif change == "deleted":
        del tenant.exchange.contacts[contact.identity]
        tenant.exchange.members[person.group.mail].discard(contact.identity)
    elif change == "hidden":
        tenant.exchange.contacts[contact.identity] = replace(contact, hidden_from_address_lists=True)
    else:
        tenant.exchange.contacts[contact.identity] = replace(contact, provenance="someone else's")
    found = await tenant.checker(person.group, [person])
    assert kinds(found[person.key]) == expected


async def test_an_adopted_contact_is_not_asked_for_a_stamp() -> None:
    tenant = Tenant()
    person = tenant.contact_in_dl(1, created=False)
    assert (await tenant.checker(person.group, [person]))[person.key] == ()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("disabled", [DriftKind.GUEST_DISABLED]),
        ("unsubscribed", [DriftKind.NOT_SUBSCRIBED]),
        ("removed", [DriftKind.NOT_A_MEMBER]),
        ("deleted", [DriftKind.RECIPIENT_MISSING]),
    ],
)
async def test_each_change_to_a_guest_is_its_finding(change: str, expected: list[DriftKind]) -> None:
    tenant = Tenant()
    person = tenant.guest_in_m365(1)
    guest_id = person.recipient.id
    if change == "disabled":
        tenant.graph.disabled.add(guest_id)
    elif change == "unsubscribed":
        tenant.exchange.subscribers[person.group.mail].discard(guest_id)
    else:
        tenant.graph.members[person.group.id].discard(guest_id)
        tenant.exchange.subscribers[person.group.mail].discard(guest_id)
        if change == "deleted":
            del tenant.graph.users[guest_id]
    found = await tenant.checker(person.group, [person])
    assert kinds(found[person.key]) == expected


@pytest.mark.parametrize(
    ("restriction", "expected"),
    [
        ({"accept_messages_only_from": ("someone-else",)}, DriftKind.SENDERS_RESTRICTED),
        ({"reject_messages_from": ("entra-1",)}, DriftKind.SENDER_REJECTED),
        ({"moderation_enabled": True}, DriftKind.MODERATED),
    ],
)
async def test_sender_rules_are_findings_only_for_people_who_may_send(
    restriction: dict[str, object], expected: DriftKind
) -> None:
    tenant = Tenant()
    sender, reader = tenant.contact_in_dl(1), tenant.contact_in_dl(2, allow_senders=False)
    tenant.restrict(tenant.dl, **restriction)
    found = await tenant.checker(sender.group, [sender, reader])
    assert kinds(found[sender.key]) == [expected]
    assert found[reader.key] == ()
    (finding,) = found[sender.key]
    assert "'guid-1'" in finding.fix and "person1@" not in finding.fix + finding.description


async def test_sender_authentication_is_repaired_once_for_the_whole_group() -> None:
    tenant = Tenant(fix_allowed=True)
    people = [tenant.contact_in_dl(n) for n in range(5)]
    tenant.restrict(tenant.dl, require_sender_authentication=True)
    found = await tenant.checker(people[0].group, people)
    assert tenant.script.calls.count("set_require_sender_authentication") == 1
    assert tenant.exchange.restrictions["partners@contoso.com"].require_sender_authentication is False
    for person in people:
        (finding,) = found[person.key]
        assert (finding.kind, finding.repaired) == (DriftKind.SENDER_AUTHENTICATION_REQUIRED, True)


async def test_sender_authentication_is_reported_where_the_policy_does_not_allow_the_fix() -> None:
    tenant = Tenant(fix_allowed=False)
    person = tenant.contact_in_dl(1)
    tenant.restrict(tenant.dl, require_sender_authentication=True)
    (finding,) = (await tenant.checker(person.group, [person]))[person.key]
    assert finding.kind is DriftKind.SENDER_AUTHENTICATION_REQUIRED and not finding.repaired
    assert "Set-DistributionGroup -Identity 'partners@contoso.com' -RequireSenderAuthenticationEnabled $false" in (
        finding.fix
    )
    assert "set_require_sender_authentication" not in tenant.script.calls


async def test_a_deleted_group_is_one_finding_per_person_without_more_calls() -> None:
    tenant = Tenant()
    people = [tenant.contact_in_dl(n) for n in range(3)]
    del tenant.graph.groups[tenant.dl.id]
    found = await tenant.checker(people[0].group, people)
    assert {kinds(f)[0] for f in found.values()} == {DriftKind.GROUP_MISSING}
    assert tenant.script.calls == ["get_group"]


async def test_the_group_is_read_once_for_all_its_people() -> None:
    tenant = Tenant()
    people = [tenant.guest_in_m365(n) for n in range(50)]
    await tenant.checker(people[0].group, people)
    assert len(tenant.script.calls) == 4  # the group, its sender settings, its members, its subscribers


async def test_beyond_the_pages_read_each_person_is_checked_alone() -> None:
    tenant = Tenant()
    tenant.graph.members_page = 1
    people = [tenant.guest_in_m365(n) for n in range(3)]
    # A group far larger than the people checked: its first pages (one per person) hold none of them.
    tenant.graph.members[tenant.m365.id] |= {f"a-staff-{n}" for n in range(10)}
    tenant.graph.members[tenant.m365.id].discard(people[2].recipient.id)
    found = await tenant.checker(people[0].group, people)
    assert [kinds(found[p.key]) for p in people] == [[], [], [DriftKind.NOT_A_MEMBER]]
    assert tenant.script.calls.count("group_members_within") == 1
    assert tenant.script.calls.count("is_group_member") == 3


async def test_throttling_is_raised_for_the_caller_to_redeliver() -> None:
    tenant = Tenant()
    person = tenant.contact_in_dl(1)
    tenant.script.fail_next("distribution_group_members_within", ThrottledError("slow down", face="exchange"))
    with pytest.raises(ThrottledError):
        await tenant.checker(person.group, [person])


async def test_a_contact_graph_cannot_see_is_not_an_error() -> None:
    tenant = Tenant()
    tenant.exchange.members_page = 1
    people = [tenant.contact_in_dl(n) for n in range(3)]
    tenant.exchange.members[people[0].group.mail].discard(people[2].recipient.id)
    tenant.script.fail_next("is_contact_member", NotFoundError("not yet", face="graph"))
    found = await tenant.checker(people[0].group, people)
    assert kinds(found[people[2].key]) == [DriftKind.NOT_A_MEMBER]


async def test_the_app_builds_its_checker_from_the_stages_dependencies() -> None:
    tenant = Tenant()
    deps = StageDependencies(
        graph=tenant.graph,
        exchange=tenant.exchange,
        policy=_policy(fix_allowed=False),
        retry=RetryPolicy(),
        guest_redirect_url="https://myapplications.microsoft.com",
    )
    checker: GroupChecker = group_checker(deps)  # what the app's bootstrap asks shared.drift.checks for
    person = tenant.contact_in_dl(1)
    tenant.restrict(tenant.dl, require_sender_authentication=True)
    (finding,) = (await checker(person.group, [person]))[person.key]
    assert not finding.repaired  # the policy given, not another
