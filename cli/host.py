"""`onboard host`: function_app.py's triggers on the local Functions host (a stand-in), against the
configured namespace and tenant: the emulator and sandbox, or real Azure."""

from __future__ import annotations

import asyncio
import os

from cli.plumbing import configure_logging, console, fail, settings_for, until_interrupted
from shared.settings import ServiceBusSettings, Settings


def serve_host(*, verbose: bool) -> None:
    """Run the triggers until Ctrl-C; missing or malformed app settings stop before starting."""
    from cli.upstream import namespace_of
    from shared.bootstrap import close_services
    from shared.startup import AppCannotStart
    from standins.local_host import LocalHost
    from standins.stack import start_function_app, supply_sandbox_credential

    configure_logging(verbose)
    settings = settings_for("host", Settings, ServiceBusSettings)
    supply_sandbox_credential(os.environ)
    try:
        app = start_function_app()
    except AppCannotStart as error:  # before any message is taken, as in Azure
        raise fail(f"onboard host: {error}", 2) from None

    async def serve() -> None:
        local_host = LocalHost(app)
        count = len(local_host.triggers) + len(local_host.timers)
        console.print(f"Local host runs {count} functions on {namespace_of(settings)}. Ctrl-C stops.", markup=False)
        stop = until_interrupted()

        async def say_what_stopping_waits_for() -> None:
            await stop.wait()
            running = local_host.in_flight
            finishing = f"letting {running} running invocation(s) finish, then " if running else ""
            console.print(f"Stopping: {finishing}closing the connections to Service Bus and the tenant.", markup=False)

        saying = asyncio.ensure_future(say_what_stopping_waits_for())
        try:
            await local_host.run(stop)
        finally:
            saying.cancel()
            await close_services()

    asyncio.run(serve())
