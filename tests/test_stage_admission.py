"""Later stages take nothing in a stage message on trust (shared/stages/admission.py): forged shapes.

Each forged message is what anyone with send rights on add-member or verify-delivery could put there;
each must end PolicyDenied (or be acted on as the directory says, never as the message says) with
nothing changed. The same shapes go through the real SDK, emulator, sandbox and host in
tests/test_forged_stage_messages.py.
"""

from __future__ import annotations

import pytest

from shared.contracts import DeadLetterReason, GroupKind, StageMessage
from shared.decisions import Finish, PassOn, RetryLater
from shared.directory.ports import DirectoryUser
from shared.policy import OnboardingPolicy
from shared.stages.add_member import add_member
from shared.stages.verify_delivery import verify_delivery
from tests.test_stage_decisions import World, assert_dead_letter, delivery, member_message, pass_on, request_body

INTERNAL_ID = "0f0f0f0f-1111-2222-3333-444444444444"


@pytest.fixture
def world() -> World:
    return World()


def _forged(message: StageMessage, **changes: object) -> StageMessage:
    return message.model_copy(update=changes)


async def _guest_message_naming_the_internal_user(world: World) -> StageMessage:
    """An honest guest's add-member message, forged to name ceo@fabrikam.example and the internal user."""
    message = await pass_on(world, request_body(group={"smtp_address": "falcon@contoso.com"}))
    return _forged(
        message,
        request=message.request.model_copy(update={"external_email": "ceo@fabrikam.example"}),
        recipient=message.recipient.model_copy(update={"id": INTERNAL_ID, "directory_object_id": INTERNAL_ID}),
    )


async def test_a_group_outside_the_policy_is_refused_before_any_change(world: World) -> None:
    world.policy = OnboardingPolicy.model_validate({"sources": {"hr": {"allowed_groups": ["partners@contoso.com"]}}})
    message = await pass_on(world, request_body())
    secret = world.graph.add_group(GroupKind.MICROSOFT_365, "board@contoso.com")
    forged = _forged(message, group=message.group.model_copy(update={"id": secret.id, "mail": secret.mail}))
    forged = _forged(forged, group=forged.group.model_copy(update={"kind": GroupKind.MICROSOFT_365}))
    dead = assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    assert "may not manage the members of group 'Group board@contoso.com'" in dead.description
    assert not world.graph.members[secret.id] and "add_group_member" not in world.script.calls


async def test_the_group_is_acted_on_by_its_id_whatever_address_the_message_gives(world: World) -> None:
    """The review's case: the policy matched the id while the action used a forged address."""
    other = world.graph.add_group(GroupKind.DISTRIBUTION, "finance@contoso.com")
    message = await member_message(world)
    forged = _forged(message, group=message.group.model_copy(update={"mail": other.mail}))
    decision = await verify_delivery(forged, delivery(), world.deps)
    assert isinstance(decision, Finish), decision
    assert decision.outcome.group is not None and decision.outcome.group.mail == "partners@contoso.com"
    assert "finance@contoso.com" not in world.exchange.restrictions  # untouched: still requires authentication
    assert not world.exchange.restrictions["partners@contoso.com"].require_sender_authentication


async def test_a_recipient_that_is_not_the_requests_contact_is_refused(world: World) -> None:
    message = await pass_on(world, request_body())
    forged = _forged(message, recipient=message.recipient.model_copy(update={"id": INTERNAL_ID}))
    assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    assert "add_distribution_group_member" not in world.script.calls


async def test_an_internal_user_named_as_the_guest_is_refused(world: World) -> None:
    world.graph.users[INTERNAL_ID] = DirectoryUser(INTERNAL_ID, "ceo@fabrikam.example", "Member")
    forged = await _guest_message_naming_the_internal_user(world)
    dead = assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    assert "internal user" in dead.description
    assert INTERNAL_ID not in world.graph.members[world.m365.id]


async def test_an_internal_user_found_by_other_mails_is_refused_not_waited_for(world: World) -> None:
    """Entra matches an address in otherMails too (as create-contact's look-up does): no replication lag."""
    internal = DirectoryUser(INTERNAL_ID, None, "Member")
    world.graph.users[INTERNAL_ID] = internal
    world.graph.other_addresses["ceo@fabrikam.example"] = internal
    forged = await _guest_message_naming_the_internal_user(world)
    dead = assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    assert "internal user" in dead.description


async def test_a_dry_run_never_acts_in_a_later_stage(world: World) -> None:
    message = await pass_on(world, request_body())
    forged = _forged(message, request=message.request.model_copy(update={"dry_run": True}))
    dead = assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    assert "dry run" in dead.description


async def test_an_unknown_source_is_refused_in_every_stage(world: World) -> None:
    message = await member_message(world)
    forged = _forged(message, request=message.request.model_copy(update={"source_system": "intruder"}))
    for stage in (add_member, verify_delivery):
        dead = assert_dead_letter(await stage(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
        assert "'intruder' is not listed" in dead.description


async def test_a_policy_changed_in_flight_is_honoured(world: World) -> None:
    message = await pass_on(world, request_body())
    world.policy = OnboardingPolicy.model_validate({"sources": {"hr": {"allowed_groups": ["other@contoso.com"]}}})
    assert_dead_letter(await add_member(message, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)
    world.policy = OnboardingPolicy.model_validate(
        {"sources": {"hr": {"allowed_groups": ["*"]}}, "blocked_domains": ["fabrikam.example"]}
    )
    assert_dead_letter(await add_member(message, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)


async def test_a_kind_that_differs_from_the_directory_is_refused(world: World) -> None:
    message = await pass_on(world, request_body())
    forged = _forged(message, group=message.group.model_copy(update={"kind": GroupKind.MAIL_ENABLED_SECURITY}))
    assert_dead_letter(await add_member(forged, delivery(), world.deps), DeadLetterReason.POLICY_DENIED)


async def test_a_recipient_not_visible_yet_is_retried_not_refused(world: World) -> None:
    message = await pass_on(world, request_body(group={"smtp_address": "falcon@contoso.com"}))
    world.graph.users.clear()  # the invitation has not replicated to the replica this read reaches
    decision = await add_member(message, delivery(), world.deps)
    assert isinstance(decision, RetryLater), decision
    assert "not visible yet" in decision.cause


async def test_an_honest_message_passes(world: World) -> None:
    decision = await add_member(await pass_on(world, request_body()), delivery(), world.deps)
    assert isinstance(decision, PassOn)
