"""The app holds exactly the rights it documents: each one is used, and a tenant without it gets a clear reason.

The local stack's identity holds what `onboard grant` gives (standins/local_app.py) and the tenant
sandbox checks every call's rights as Microsoft does (docs/permissions.md). Here each right of the
plan is left out in turn and a request that needs it runs: it must end PermissionDenied naming
that right, with nothing half-done hidden; and the plan grants nothing the code does not name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.grant_plan import GrantPlan, GroupKindInUse, plan_for
from shared.contracts import DeadLetterReason, OutcomeStatus
from shared.directory import rights
from standins.local_app import LOCAL_PLAN, without
from standins.stack import local_stack
from tests.fixtures.pipeline import onboard
from tools.demo import SAMPLES, WELCOME_SETTINGS

SAMPLE = {sample.request.request_id: sample.request for sample in SAMPLES}


def _granted(plan: GrantPlan) -> set[str]:
    return (
        {grant.value for grant in plan.app_roles}
        | {role.name for role in plan.directory_roles}
        | {assignment.role for assignment in plan.exchange_side}
    )


def test_the_plan_grants_every_right_the_code_names_and_nothing_else() -> None:
    named = {
        value
        for name, value in vars(rights).items()
        if name.isupper() and isinstance(value, str) and value != rights.MAIL_SEND  # Mail.Send: the opt-in wide form
    }
    assert _granted(LOCAL_PLAN) == named


def test_every_call_names_a_right_the_plan_knows() -> None:
    granted = _granted(LOCAL_PLAN)
    for call, right in rights.GRAPH_CALLS.items():
        parts = set(right.removesuffix(" for the welcome mailbox").split(" and "))
        assert parts <= granted, (call, right)
    assert set(rights.EXCHANGE_CMDLETS.values()) <= granted


def test_tenant_wide_mail_send_replaces_the_scoped_role() -> None:
    plan = plan_for(frozenset(GroupKindInUse), "welcome@contoso.com", tenant_wide_mail_send=True)
    assert rights.MAIL_SEND in {grant.value for grant in plan.app_roles}
    assert rights.APPLICATION_MAIL_SEND not in {assignment.role for assignment in plan.exchange_side}


def test_a_plan_for_microsoft_365_groups_only_reads_no_contacts() -> None:
    plan = plan_for(frozenset({GroupKindInUse.M365}), None)
    values = {grant.value for grant in plan.app_roles}
    assert rights.ORG_CONTACT_READ not in values
    assert not plan.exchange_side


@dataclass(frozen=True)
class Missing:
    right: str
    request_id: str  # a sample whose path needs the right
    welcome: bool = False


MISSING = [
    Missing(rights.GROUP_READ, "demo-dg-1"),
    Missing(rights.USER_READ, "demo-m365-1"),
    Missing(rights.ORG_CONTACT_READ, "demo-dg-1"),
    Missing(rights.USER_INVITE, "demo-m365-1"),
    Missing(rights.GROUP_MEMBER_WRITE, "demo-m365-1"),
    Missing(rights.MANAGE_AS_APP, "demo-dg-1"),
    Missing(rights.RECIPIENT_ADMINISTRATOR, "demo-dg-1"),
    Missing(rights.SECURITY_GROUP_MEMBERSHIP, "demo-mesg-1"),
    Missing(rights.APPLICATION_MAIL_SEND, "demo-dg-1", welcome=True),
    Missing(rights.MESSAGE_TRACKING, "demo-dg-1", welcome=True),
]


def test_every_right_of_the_plan_is_tried_without() -> None:
    assert {missing.right for missing in MISSING} == _granted(LOCAL_PLAN)


@pytest.mark.stack
@pytest.mark.parametrize("missing", MISSING, ids=[m.right for m in MISSING])
async def test_without_a_right_the_request_ends_permission_denied_naming_it(missing: Missing) -> None:
    settings = WELCOME_SETTINGS if missing.welcome else {}
    with local_stack(grant=without(LOCAL_PLAN, missing.right), settings=settings) as stack:
        outcomes = await onboard(stack, [SAMPLE[missing.request_id]])
    outcome = outcomes[missing.request_id]
    assert outcome.status is OutcomeStatus.FAILED, outcome
    assert outcome.reason is DeadLetterReason.PERMISSION_DENIED, outcome
    assert missing.right in outcome.description, outcome.description
    assert "onboard grant" in outcome.description


def test_the_rights_table_in_infra_readme_is_the_grant() -> None:
    """infra/README.md's directory rows name exactly what the grant gives (with every feature on)."""
    table = (Path(__file__).parent.parent / "infra" / "README.md").read_text()
    directory_rows = re.findall(
        r"^\| (?:Microsoft Graph|Office 365 Exchange Online|Entra role|Exchange)[^|]* \| ([^|,(]+?)(?:,| \(| \|)",
        table,
        re.MULTILINE,
    )
    assert set(directory_rows) == _granted(LOCAL_PLAN)
