"""The demo's data: the policy the local stack runs the app with, the welcome mailbox, the sample
requests, each with the outcome it must reach, and the lifecycle steps sent once the samples have their
outcomes (one sample's names change, another sample leaves). They fit the sandbox's seeded tenant
(standins/tenant_sandbox/demo_tenant.json): its groups, its accepted domains, its welcome mailbox."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.contracts import GroupRef, OnboardingRequest, OutcomeEvent, OutcomeStatus, RequestAction

# Allows source system demo-hr into the demo tenant's three onboarding groups.
DEMO_POLICY = Path(__file__).with_name("policy.json")
# What the app starts with when it reaches nothing: importing function_app.py checks its settings
# (shared/startup.py), so indexing it off any stack (tests, benchmarks) needs these.
OFFLINE_APP_SETTINGS = {
    "ServiceBusConnection": "Endpoint=sb://localhost;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true;",
    "ONBOARDING_TENANT_ID": "00000000-0000-0000-0000-000000000001",
    "ONBOARDING_POLICY_FILE": str(DEMO_POLICY),
}
# The demo tenant's welcome mailbox; the sandbox's message trace needs seconds, not minutes.
WELCOME_SETTINGS = {
    "ONBOARDING_WELCOME_SENDER": "welcome@contoso.com",
    "ONBOARDING_WELCOME_CHECK_INTERVAL_SECONDS": "1",
}


def demo_request(
    request_id: str, email: str, name: str, group: str, action: RequestAction = RequestAction.ONBOARD
) -> OnboardingRequest:
    """A request from the demo policy's source system to onboard `name` <`email`> into `group` (an SMTP
    address), or to give them that name (update), or to take them out of it (offboard: no name needed)."""
    first, _, last = name.partition(" ")
    named = action is not RequestAction.OFFBOARD
    return OnboardingRequest(
        request_id=request_id,
        action=action,
        external_email=email,
        display_name=name if named else None,
        first_name=first if named else None,
        last_name=(last or None) if named else None,
        group=GroupRef(smtp_address=group),
        source_system="demo-hr",
    )


@dataclass(frozen=True)
class Sample:
    title: str
    request: OnboardingRequest
    expected_status: OutcomeStatus
    expected_reason: str | None = None

    def met_by(self, outcome: OutcomeEvent | None) -> bool:
        return outcome is not None and outcome.status == self.expected_status and outcome.reason == self.expected_reason


# One per group kind, and one that must fail.
SAMPLES = (
    Sample(
        "Distribution group (5.7.133 fix applied)",
        demo_request("demo-dg-1", "jordan.reyes@fabrikam.example", "Jordan Reyes", "partners@contoso.com"),
        OutcomeStatus.SUCCEEDED,
    ),
    Sample(
        "Mail-enabled security group",
        demo_request("demo-mesg-1", "mei.tanaka@northwind.example", "Mei Tanaka", "suppliers-secure@contoso.com"),
        OutcomeStatus.SUCCEEDED,
    ),
    Sample(
        "Microsoft 365 group (guest)",
        demo_request("demo-m365-1", "sam.okafor@tailspin.example", "Sam Okafor", "project-falcon@contoso.com"),
        OutcomeStatus.SUCCEEDED,
    ),
    Sample(
        "Unknown group",
        demo_request("demo-unknown-1", "lee.chen@fabrikam.example", "Lee Chen", "no-such-group@contoso.com"),
        OutcomeStatus.FAILED,
        "GroupNotFound",
    ),
)

# Sent once every sample has its outcome: the distribution group's contact takes a new name (the app created
# it, so it may rename it), and the mail-enabled security group's person leaves (the contact goes too: the app
# created it and it is in no other group).
LIFECYCLE = (
    Sample(
        "Update: Jordan Reyes is renamed Jordan Reyes-Ortiz",
        demo_request(
            "demo-dg-1-update",
            "jordan.reyes@fabrikam.example",
            "Jordan Reyes-Ortiz",
            "partners@contoso.com",
            RequestAction.UPDATE,
        ),
        OutcomeStatus.SUCCEEDED,
    ),
    Sample(
        "Offboard: Mei Tanaka leaves the mail-enabled security group",
        demo_request(
            "demo-mesg-1-offboard",
            "mei.tanaka@northwind.example",
            "Mei Tanaka",
            "suppliers-secure@contoso.com",
            RequestAction.OFFBOARD,
        ),
        OutcomeStatus.SUCCEEDED,
    ),
)
