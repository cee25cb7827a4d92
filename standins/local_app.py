"""The local app's identity in the tenant sandbox, and the rights `onboard grant` gives it.

In Azure the function app runs as its managed identity, and an administrator runs `onboard grant`
once to give that identity its Graph and Exchange rights (docs/deploy.md). Locally the sandbox holds
a service principal standing for that identity; the stack plants it and runs the same grant (the
product's own code, as the sandbox's administrator), then gives it what the printed Exchange steps
give. So the local host, the demo and the suite hold exactly the rights the grant documents, and a
test can leave one out to see what a tenant without it answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
from collections.abc import Coroutine
from typing import Any

from rich.console import Console

from cli.grant_plan import GrantPlan, GroupKindInUse, plan_for
from standins.tenant_sandbox import Knobs, TenantSandbox
from standins.tenant_sandbox.credential import SandboxCredential
from standins.tenant_sandbox.grants_face import NewServicePrincipal

APP_OBJECT_ID = "4f7a0c2e-5b1d-4e8a-9c3f-0a1b2c3d4e5f"
APP_CLIENT_ID = "9d3e1f2a-7c4b-4a6e-8f0d-1e2f3a4b5c6d"
APP_DISPLAY_NAME = "onboarding app (local)"
# Everything the demo uses: every supported group kind and the welcome message from the demo tenant's mailbox.
LOCAL_PLAN = plan_for(frozenset(GroupKindInUse), "welcome@contoso.com")


def without(plan: GrantPlan, right: str) -> GrantPlan:
    """The plan less one right, named as docs/permissions.md names it (an app role, a directory role, an Exchange role)."""
    return dataclasses.replace(
        plan,
        app_roles=tuple(g for g in plan.app_roles if g.value != right),
        directory_roles=tuple(r for r in plan.directory_roles if r.name != right),
        exchange_side=tuple(a for a in plan.exchange_side if a.role != right),
    )


def _run(work: Coroutine[Any, Any, bool]) -> bool:
    """Run the grant on a loop of its own: callers may already be inside one (async tests, the demo)."""
    result: list[bool] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(work))
        except BaseException as error:  # handed to the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=target, name="grant-local-app")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def grant_local_app(sandbox: TenantSandbox, plan: GrantPlan = LOCAL_PLAN) -> str:
    """Plant the app's service principal (once) and grant it `plan` as `onboard grant` does; its client id."""
    from cli.grant_graph import run_grant  # msgraph-sdk only when granting

    if sandbox.grants.visible(APP_OBJECT_ID) is None:
        sandbox.grants.add_service_principal(
            NewServicePrincipal(display_name=APP_DISPLAY_NAME, id=APP_OBJECT_ID, app_id=APP_CLIENT_ID)
        )
    administrator = SandboxCredential.administrator(sandbox.tenant_id, authority=sandbox.base_url)
    quiet = Console(file=io.StringIO(), width=200)
    # Set-up, not under test: no scripted faults or throttling, and nothing left in the request log.
    knobs, logged = sandbox.gate.knobs, len(sandbox.request_log)
    sandbox.set_knobs(**Knobs().model_dump())
    try:
        _run(
            run_grant(
                plan,
                APP_OBJECT_ID,
                administrator,
                graph_url=sandbox.graph_base_url,
                wait_for_identity=0,
                confirm=lambda: True,
                console=quiet,
            )
        )
    finally:
        sandbox.set_knobs(**knobs.model_dump())
        sandbox.request_log.forget_since(logged)
    # The Exchange Online PowerShell steps the grant prints, done as the administrator would do them.
    for assignment in plan.exchange_side:
        sandbox.grants.assign_exchange_role(APP_OBJECT_ID, assignment.role, assignment.recipient_scope)
    return APP_CLIENT_ID


def app_credential(sandbox: TenantSandbox) -> SandboxCredential:
    """Tokens for the local app's identity: what the sandbox's directory grants it, nothing more."""
    return SandboxCredential(sandbox.tenant_id, authority=sandbox.base_url, client_id=APP_CLIENT_ID)
