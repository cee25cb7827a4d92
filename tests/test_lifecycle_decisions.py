"""Offboard and update decisions at intake, over the hand-written fake directories (pure logic).

The same paths run end to end against the emulator, the sandbox and the local host in
tests/test_lifecycle.py; here every branch is taken quickly.
"""

from __future__ import annotations

from dataclasses import replace

from shared.contracts import DeadLetterReason, OnboardingRequest, OutcomeStatus, RequestAction
from shared.decisions import Finish, PassOn
from shared.directory.ports import DirectoryUser
from shared.stages import add_member, create_contact
from tests.test_stage_decisions import World, assert_dead_letter, delivery, pass_on, request_body, world

__all__ = ["world"]  # the fixture, shared with the onboarding decisions

ADDRESS = "jordan.reyes@fabrikam.example"


def offboard_body(**overrides: object) -> OnboardingRequest:
    return request_body(action="offboard", display_name=None, **overrides)


async def onboarded(world: World, group: dict[str, str] | None = None) -> None:
    """The person as an onboarding leaves them: a stamped contact (or a guest), a member of the group."""
    message = await pass_on(world, request_body(**({"group": group} if group else {})))
    decision = await add_member(message, replace(delivery(), request_id="req-1"), world.deps)
    assert isinstance(decision, PassOn), decision


async def finished(world: World, body: OnboardingRequest, request_id: str = "req-2") -> Finish:
    decision = await create_contact(body, replace(delivery(), request_id=request_id), world.deps)
    assert isinstance(decision, Finish), decision
    return decision


async def test_offboarding_removes_the_membership_and_deletes_the_contact_the_app_created(world: World) -> None:
    await onboarded(world)
    done = await finished(world, offboard_body())
    assert done.outcome.status is OutcomeStatus.SUCCEEDED and done.outcome.action is RequestAction.OFFBOARD
    assert world.exchange.members["partners@contoso.com"] == set()
    assert world.exchange.contacts == {}
    assert "Deleted the mail contact this app created (request req-1)" in done.outcome.changes


async def test_offboarding_someone_who_is_not_a_member_succeeds_saying_so(world: World) -> None:
    done = await finished(world, offboard_body())
    assert done.outcome.status is OutcomeStatus.SUCCEEDED
    assert "not a member" in done.outcome.description and done.outcome.changes == ()
    await onboarded(world)
    await finished(world, offboard_body())
    again = await finished(world, offboard_body())  # a replay after the contact is gone
    assert "nothing to remove" in again.outcome.description


async def test_an_adopted_contact_loses_the_membership_and_is_kept(world: World) -> None:
    await onboarded(world)
    (contact,) = world.exchange.contacts.values()
    world.exchange.contacts[contact.identity] = replace(contact, provenance=None)  # there before the app
    done = await finished(world, offboard_body())
    assert world.exchange.members["partners@contoso.com"] == set()
    assert contact.identity in world.exchange.contacts
    assert "adopted" in done.outcome.description
    assert done.outcome.recipient is not None and not done.outcome.recipient.created


async def test_a_contact_still_in_another_group_is_kept(world: World) -> None:
    await onboarded(world)
    (contact,) = world.exchange.contacts.values()
    other = world.graph.add_group(world.dl.kind, "suppliers@contoso.com")
    world.exchange.members[other.mail or ""].add(contact.identity)
    done = await finished(world, offboard_body())
    assert contact.identity in world.exchange.contacts
    assert "still a member of 1 other group" in done.outcome.description


async def test_offboarding_a_guest_from_a_microsoft_365_group_keeps_the_guest(world: World) -> None:
    await onboarded(world, {"object_id": world.m365.id})
    done = await finished(world, offboard_body(group={"object_id": world.m365.id}))
    assert world.graph.members[world.m365.id] == set() and len(world.graph.users) == 1
    assert "no longer a member" in done.outcome.description


async def test_offboarding_an_internal_user_is_refused(world: World) -> None:
    world.graph.users["u-1"] = DirectoryUser("u-1", ADDRESS, "Member")
    decision = await create_contact(offboard_body(group={"object_id": world.m365.id}), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_IN_USE_INTERNALLY)


async def test_an_offboard_dry_run_changes_nothing(world: World) -> None:
    await onboarded(world)
    done = await finished(world, offboard_body(dry_run=True))
    assert done.outcome.status is OutcomeStatus.PLANNED
    assert done.outcome.changes == (
        "Remove from Group partners@contoso.com",
        "Delete the mail contact this app created",
    )
    assert len(world.exchange.contacts) == 1 and world.exchange.members["partners@contoso.com"]


async def test_offboarding_from_a_group_the_source_may_not_manage_is_refused(world: World) -> None:
    await onboarded(world)
    world.policy = world.policy.model_validate({"sources": {"hr": {"allowed_groups": ["other@contoso.com"]}}})
    decision = await create_contact(offboard_body(), delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.POLICY_DENIED)
    assert world.exchange.members["partners@contoso.com"]


async def test_an_update_sets_the_names_of_the_contact_the_app_created(world: World) -> None:
    await onboarded(world)
    body = request_body(action="update", display_name="Jordan Reyes-Ortiz", last_name="Reyes-Ortiz")
    done = await finished(world, body)
    (contact,) = world.exchange.contacts.values()
    assert world.exchange.renamed[contact.identity] == ("Jordan Reyes-Ortiz", None, "Reyes-Ortiz")
    assert done.outcome.action is RequestAction.UPDATE and done.outcome.status is OutcomeStatus.SUCCEEDED


async def test_an_update_with_a_new_address_is_refused_before_any_lookup(world: World) -> None:
    body = request_body(action="update", new_external_email="jordan@northwind.example")
    decision = await create_contact(body, delivery(), world.deps)
    assert_dead_letter(decision, DeadLetterReason.ADDRESS_CHANGE_REFUSED)
    assert world.script.calls == []
    same = request_body(action="update", new_external_email="Jordan.Reyes@Fabrikam.example")
    assert_dead_letter(await create_contact(same, delivery(), world.deps), DeadLetterReason.DIRECTORY_REJECTED)


async def test_an_update_of_an_adopted_contact_or_a_guest_is_refused(world: World) -> None:
    await onboarded(world)
    (contact,) = world.exchange.contacts.values()
    world.exchange.contacts[contact.identity] = replace(contact, provenance=None)
    adopted = await create_contact(request_body(action="update"), delivery(), world.deps)
    assert "adopted" in assert_dead_letter(adopted, DeadLetterReason.DIRECTORY_REJECTED).description
    assert world.exchange.renamed == {}


async def test_a_later_stage_refuses_an_offboard_or_update_it_is_told(world: World) -> None:
    message = await pass_on(world, request_body())
    for action in (RequestAction.OFFBOARD, RequestAction.UPDATE):
        forged = message.model_copy(update={"request": message.request.model_copy(update={"action": action})})
        decision = await add_member(forged, delivery(), world.deps)
        assert f"carries an {action}" in assert_dead_letter(decision, DeadLetterReason.POLICY_DENIED).description
    assert world.exchange.members["partners@contoso.com"] == set()
