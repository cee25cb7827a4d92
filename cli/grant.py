"""`onboard grant`: give the function app's managed identity the directory rights its features need, no more.

The plan follows the features in use (cli/grant_plan.py):
Graph app roles per group kind, Exchange.ManageAsApp, the Entra role Exchange Recipient Administrator,
and, as printed Exchange Online PowerShell, what Graph cannot grant: a role group for mail-enabled
security groups, Mail.Send scoped to the welcome mailbox (RBAC for Applications) and message trace.
Existing assignments are read first, so a second run changes nothing; Graph's 400 for a duplicate is
taken as done; a managed identity that has not replicated yet is waited for, within a bound.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from urllib.parse import urlparse

import typer
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from rich.console import Console

from cli.grant_plan import PUBLIC_GRAPH, GrantError, GroupKindInUse, plan_for


def _group_kinds(text: str) -> frozenset[GroupKindInUse]:
    kinds: set[GroupKindInUse] = set()
    for name in (part.strip() for part in text.split(",")):
        try:
            kinds.add(GroupKindInUse(name))
        except ValueError:
            allowed = ", ".join(kind.value for kind in GroupKindInUse)
            raise typer.BadParameter(f"{name!r} is not one of: {allowed}", param_hint="--group-kinds") from None
    return frozenset(kinds)


def _credential(sandbox_tenant_id: str | None, graph_url: str) -> AsyncTokenCredential:
    if sandbox_tenant_id is None:
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential()  # the operator: az login / azd auth login
    if urlparse(graph_url).hostname == urlparse(PUBLIC_GRAPH).hostname:
        raise typer.BadParameter(
            "the sandbox credential is for the local tenant sandbox only", param_hint="--graph-url"
        )
    from standins.tenant_sandbox.credential import SandboxCredential

    return SandboxCredential(sandbox_tenant_id)


def grant(
    identity: Annotated[
        str,
        typer.Option(
            help="The app's managed identity: its object (principal) id or client id "
            "(azd env get-value ONBOARDING_IDENTITY_PRINCIPAL_ID)."
        ),
    ],
    group_kinds: Annotated[
        str,
        typer.Option(
            help="Group kinds the policy targets, comma-separated: distribution, mail-enabled-security, m365."
        ),
    ],
    welcome_sender: Annotated[
        str | None,
        typer.Option(envvar="ONBOARDING_WELCOME_SENDER", help="The welcome mailbox, if the welcome message is on."),
    ] = None,
    tenant_wide_mail_send: Annotated[
        bool,
        typer.Option(help="Grant Graph Mail.Send for every mailbox instead of printing the scoped Exchange steps."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Grant without asking.")] = False,
    wait_for_identity: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for a new identity to replicate.")
    ] = 300.0,
    graph_url: Annotated[str, typer.Option(envvar="ONBOARDING_GRAPH_BASE_URL")] = PUBLIC_GRAPH,
    sandbox_tenant_id: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Give the app's managed identity the Graph and Exchange rights the features in use need."""
    from cli.grant_graph import run_grant  # msgraph-sdk only when granting

    console, errors = Console(), Console(stderr=True)
    plan = plan_for(_group_kinds(group_kinds), welcome_sender or None, tenant_wide_mail_send=tenant_wide_mail_send)
    credential = _credential(sandbox_tenant_id, graph_url)
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
        raise typer.Exit(1) from None
    except AzureError as error:  # no operator sign-in, or a network failure
        errors.print(f"[red]Not granted:[/] {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
        raise typer.Exit(1) from None
    if not done:
        errors.print("Nothing granted: declined.")
        raise typer.Exit(1)
