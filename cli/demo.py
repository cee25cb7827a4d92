"""`onboard demo`: the whole product on the local stand-ins, one sample request per group kind, then an
update of one sample's names and an offboard of another sample.

Each step (tools/demo) states the outcome it must reach; the demo succeeds only when every one does.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from azure.servicebus.aio import ServiceBusClient
from rich.console import Console, RenderableType
from rich.text import Text

from cli.following import Narration, send_and_follow
from cli.outcomes import labelled_block, outcome_lines
from cli.plumbing import CONSOLE_FORMATTER, Interrupted, configure_logging, console, fail, run_until_ctrl_c
from cli.status import status_report
from shared.contracts import OutcomeEvent
from shared.journal import SqliteJournal
from shared.settings import SERVICEBUS_CONNECTION
from standins.stack import local_stack, running_host
from tools.demo import LIFECYCLE, SAMPLES, WELCOME_SETTINGS, Sample

OUTCOME_QUEUE = "onboarding-outcomes"


def demo_command(*, timeout: float, verbose: bool) -> int:
    """Run the demo; the exit code: 0 when every sample reached its expected outcome, else 1."""
    # Quiet: the log is kept, and shown only when a sample misses its outcome (the expected
    # GroupNotFound is logged as a dead-letter, which is no news in a demo).
    stream = logging.StreamHandler(sys.stderr)
    kept = None if verbose else logging.handlers.MemoryHandler(100_000, logging.CRITICAL + 1, stream)
    configure_logging(verbose, kept or stream)
    try:
        succeeded = run_until_ctrl_c(run_demo(console, within_seconds=timeout))
    except (Interrupted, KeyboardInterrupt):
        raise fail("Interrupted; everything started was stopped.", 130) from None
    if kept is not None:
        if not succeeded:
            stream.setFormatter(CONSOLE_FORMATTER)
            kept.flush()
        kept.buffer.clear()
    return 0 if succeeded else 1


async def run_demo(console: Console, *, within_seconds: float = 90.0) -> bool:
    """Start the stack, submit the samples, then the lifecycle steps (an update and an offboard) once the
    samples have their outcomes, and print every outcome; True when every step met its expectation."""
    with local_stack(settings=WELCOME_SETTINGS) as stack:
        stack.sandbox.set_knobs(trace_lag_seconds=2)  # the welcome message shows in message trace a little later
        console.print(
            f"[dim]Service Bus emulator on port {stack.emulator.port}, tenant sandbox at {stack.sandbox.base_url}[/]"
        )
        async with running_host(stack.environment) as host:
            console.print(f"[dim]Local host runs {len(host.triggers)} functions (3 stages, 3 dead-letter queues)[/]")
            async with ServiceBusClient.from_connection_string(stack.environment[SERVICEBUS_CONNECTION]) as client:
                onboarded = await _send(console, client, SAMPLES, within_seconds, "requests")
                for sample in SAMPLES:
                    console.print(_sample_block(sample, onboarded.get(str(sample.request.request_id))))
                console.print("Then one person's names change and another person leaves:")
                changed = await _send(
                    console, client, LIFECYCLE, within_seconds, "lifecycle requests (update, offboard)"
                )
                for sample in LIFECYCLE:
                    console.print(_sample_block(sample, changed.get(str(sample.request.request_id))))
        first_id = str(SAMPLES[0].request.request_id)
        history = await status_report(SqliteJournal(stack.journal_database), first_id)
    console.print(history)
    console.print(
        "[dim]The demo's stand-ins, host and journal stopped with it. For a pipeline that stays, to try "
        "`onboard status` and `onboard dlq` on, run it by hand (README, By hand).[/]"
    )
    outcomes = onboarded | changed
    steps = (*SAMPLES, *LIFECYCLE)
    met = [sample.met_by(outcomes.get(str(sample.request.request_id))) for sample in steps]
    console.print(f"{sum(met)} of {len(steps)} steps reached their expected outcome.")
    return all(met)


async def _send(
    console: Console, client: ServiceBusClient, samples: tuple[Sample, ...], within_seconds: float, what: str
) -> dict[str, OutcomeEvent]:
    """Send the samples' requests and wait for their outcomes, by request id."""
    sent = await send_and_follow(
        client,
        [sample.request for sample in samples],
        reply_to=None,
        outcome_queue=OUTCOME_QUEUE,
        follow_seconds=within_seconds,
        narration=Narration(
            sent=lambda ids: console.print(
                f"Submitted {len(ids)} {what} to queue create-contact; waiting for outcomes..."
            )
        ),
    )
    return dict(sent.followed.outcomes) if sent.followed else {}


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
