"""`onboard demo`: the whole product on the local stand-ins, one sample request per group kind.

Each sample (tools/demo) states the outcome it must reach; the demo succeeds only when every one does.
"""

from __future__ import annotations

from azure.servicebus.aio import ServiceBusClient
from rich.console import Console, RenderableType
from rich.text import Text

from cli.outcomes import labelled_block, outcome_lines
from cli.status import status_report
from cli.upstream import collect_outcomes, submit
from shared.contracts import OutcomeEvent
from shared.journal import SqliteJournal
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import local_stack, running_host
from tools.demo import SAMPLES, WELCOME_SETTINGS, Sample

OUTCOME_QUEUE = "onboarding-outcomes"


async def run_demo(console: Console, *, within_seconds: float = 90.0) -> bool:
    """Start the stack, submit the samples, print their outcomes; True when every sample met its expectation."""
    with local_stack(settings=WELCOME_SETTINGS) as stack:
        stack.sandbox.set_knobs(trace_lag_seconds=2)  # the welcome message shows in message trace a little later
        console.print(
            f"[dim]Service Bus emulator on port {stack.emulator.port}, tenant sandbox at {stack.sandbox.base_url}[/]"
        )
        async with running_host(stack.environment) as host:
            console.print(f"[dim]Local host runs {len(host.triggers)} functions (3 stages, 3 dead-letter queues)[/]")
            async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
                ids = await submit(client, (sample.request for sample in SAMPLES))
                console.print(f"Submitted {len(ids)} requests to queue create-contact; waiting for outcomes...")
                outcomes = await collect_outcomes(client, OUTCOME_QUEUE, ids, within_seconds=within_seconds)
        first_id = str(SAMPLES[0].request.request_id)
        history = await status_report(SqliteJournal(stack.journal_database), first_id)
    for sample in SAMPLES:
        console.print(_sample_block(sample, outcomes.get(str(sample.request.request_id))))
    console.print(history)
    console.print("[dim]`onboard status [REQUEST_ID]` reads the same journal (ONBOARDING_JOURNAL) for any request.[/]")
    met = [sample.met_by(outcomes.get(str(sample.request.request_id))) for sample in SAMPLES]
    console.print(f"{sum(met)} of {len(SAMPLES)} samples reached their expected outcome.")
    return all(met)


def _sample_block(sample: Sample, outcome: OutcomeEvent | None) -> RenderableType:
    met = sample.met_by(outcome)
    heading = Text.assemble(("✔ " if met else "✘ ", "green" if met else "red"), (sample.title, "bold"))
    expected = str(sample.expected_status) + (f": {sample.expected_reason}" if sample.expected_reason else "")
    if outcome is None:
        lines = [("Group", Text(sample.request.group.describe())), ("Outcome", Text("none: timed out", style="red"))]
    else:
        lines = outcome_lines(outcome)
    if not met:
        lines.append(("Expected", Text(expected)))
    return labelled_block(heading, lines)
