"""`onboard grant`: give the function app's managed identity the directory rights its features need, no more.

The plan follows the features in use (cli/grant_plan.py): Graph app roles per group kind,
Exchange.ManageAsApp, the Entra role Exchange Recipient Administrator, and, as printed Exchange Online
PowerShell, what Graph cannot grant: a role group for mail-enabled security groups, Mail.Send scoped
to the welcome mailbox (RBAC for Applications) and message trace. Existing assignments are read first,
so a second run changes nothing; Graph's 400 for a duplicate is taken as done; a managed identity that
has not replicated yet is waited for, within a bound.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer
from azure.core.exceptions import AzureError
from rich.console import Console

from cli.grant_plan import GrantError, GroupKindInUse, plan_for

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential


def grant_rights(
    identity: str,
    group_kinds: str,
    *,
    welcome_sender: str | None,
    tenant_wide_mail_send: bool,
    yes: bool,
    wait_for_identity: float,
    graph_url: str,
    credential: AsyncTokenCredential | None = None,
) -> int:
    """Review, show the plan, confirm (unless `yes`), grant; the exit code: 1 when declined or refused.
    `credential` signs in to Graph; by default the operator (az login / azd auth login)."""
    from cli.grant_graph import run_grant  # msgraph-sdk only when granting

    # Made per run, not at import: their width follows COLUMNS as the command starts.
    console, errors = Console(), Console(stderr=True)
    plan = plan_for(_group_kinds(group_kinds), welcome_sender or None, tenant_wide_mail_send=tenant_wide_mail_send)
    if credential is None:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    try:
        done = asyncio.run(
            run_grant(
                plan,
                identity,
                credential,
                graph_url=graph_url.rstrip("/"),
                wait_for_identity=wait_for_identity,
                confirm=lambda: yes or typer.confirm("Grant these rights?", default=False),
                console=console,
            )
        )
    except GrantError as error:
        errors.print(f"[red]Not granted:[/] {error}", highlight=False)
        return 1
    except AzureError as error:  # no operator sign-in, or a network failure
        errors.print(f"[red]Not granted:[/] {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
        return 1
    if not done:
        errors.print("Nothing granted: declined.")
        return 1
    return 0


def _group_kinds(text: str) -> frozenset[GroupKindInUse]:
    kinds: set[GroupKindInUse] = set()
    for name in (part.strip() for part in text.split(",")):
        try:
            kinds.add(GroupKindInUse(name))
        except ValueError:
            allowed = ", ".join(kind.value for kind in GroupKindInUse)
            raise typer.BadParameter(f"{name!r} is not one of: {allowed}", param_hint="--group-kinds") from None
    return frozenset(kinds)
