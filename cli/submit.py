"""`onboard submit`, `onboard offboard`, `onboard update`: one request, validated here, sent to
`create-contact`, and with `--wait` followed to its outcome event."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError
from pydantic import ValidationError

from cli.following import Narration, send_and_follow, stopped_waiting
from cli.outcomes import render_outcome, wait_exit_code
from cli.plumbing import DUPLICATE_WINDOW_TEXT, console, errors, fail, settings_for, with_servicebus
from cli.upstream import group_target, is_queued, request_problems
from shared.contracts import OnboardingRequest, StageName
from shared.queues import DUPLICATE_WINDOW
from shared.settings import ServiceBusSettings

if TYPE_CHECKING:
    from azure.servicebus.aio import ServiceBusClient

# The option a person gave each field of the request with.
OPTIONS = {
    "external_email": "--email",
    "display_name": "--display-name",
    "first_name": "--first-name",
    "last_name": "--last-name",
    "group": "--group",
    "source_system": "--source-system",
    "request_id": "--request-id",
}


def submit_one(
    command: str,
    fields: dict[str, object],
    *,
    group: str,
    request_id: str | None,
    reply_to: str | None,
    wait: bool,
    timeout: float,
) -> int:
    """Send one request of `command` (its action and fields, the group as typed); the exit code: 0 sent, and
    with `wait` as cli.outcomes.wait_exit_code says."""
    settings = settings_for(command, ServiceBusSettings)
    body = {name: value for name, value in fields.items() if value is not None}
    try:
        request = OnboardingRequest.model_validate(body | {"group": group_target(group), "request_id": request_id})
    except ValidationError as error:
        problems = "; ".join(
            f"{OPTIONS.get(field, field)} {reason}" for field, reason in request_problems(error).items()
        )
        raise fail(f"Invalid request: {problems.removesuffix('.')}.", 2) from None
    handled_at = _first_handled(request_id) if request_id is not None else None
    outcome_queue = reply_to or settings.outcome_queue
    sent_ids: list[str] = []  # once sent: what Ctrl-C while waiting leaves behind

    async def send(client: ServiceBusClient) -> int:
        # Service Bus accepts a resend of a MessageId it saw within the window and drops it silently.
        waiting = request_id is not None and await is_queued(client, StageName.CREATE_CONTACT, request_id)

        def say_sent(request_ids: list[str]) -> None:
            sent_ids.extend(request_ids)
            (sent_id,) = request_ids
            duplicate = _duplicate_because(waiting, handled_at)
            if duplicate:
                errors.print(
                    f"Sent request {sent_id}, but Service Bus drops it as a duplicate: {duplicate}, within "
                    f"create-contact's {DUPLICATE_WINDOW_TEXT} duplicate-detection window. "
                    "Use a new --request-id to send it again.",
                    markup=False,
                )
            else:
                console.print(f"Submitted request {sent_id} to queue {StageName.CREATE_CONTACT}.", markup=False)
            if wait:
                console.print(
                    f"Waiting up to {timeout:.0f} s for its outcome on queue {outcome_queue}...", markup=False
                )
            else:
                console.print(f"Follow it with `onboard status {sent_id}` or `--wait`.", markup=False)

        sent = await send_and_follow(
            client,
            [request],
            reply_to=reply_to,
            outcome_queue=outcome_queue,
            follow_seconds=timeout if wait else None,
            narration=Narration(sent=say_sent),
        )
        (sent_id,) = sent.request_ids
        if sent.followed is None:  # not --wait
            return 0
        if (earlier := sent.followed.duplicates.get(sent_id)) is not None:
            errors.print(f"No new run: the earlier run of {sent_id} ended like this, and stands.", markup=False)
            console.print(render_outcome(earlier))
            return wait_exit_code([earlier])
        outcome = sent.followed.outcomes.get(sent_id)
        if outcome is None:
            errors.print(
                f"No outcome for {sent_id} within {timeout:.0f} s. Is `onboard host` running? "
                f"`onboard status {sent_id}` shows where it stands.",
                markup=False,
            )
        else:
            console.print(render_outcome(outcome))
        return wait_exit_code([outcome])

    def interrupted() -> str:
        return stopped_waiting(sent_ids, "Interrupted while waiting") if sent_ids else "Interrupted; nothing was sent."

    return with_servicebus(settings, send, interrupted=interrupted)


def _duplicate_because(waiting: bool, handled_at: datetime | None) -> str | None:
    if waiting:
        return "the same id is still waiting on the queue"
    if handled_at is not None and datetime.now(UTC) - handled_at < DUPLICATE_WINDOW:
        return f"the same id was handled at {handled_at:%H:%M:%S}Z"
    return None


def _first_handled(request_id: str) -> datetime | None:
    """When the journal (ONBOARDING_JOURNAL) first saw this request, if it can tell."""
    from shared.journal import JournalSettingError, open_journal, sqlite_file

    setting = os.environ.get("ONBOARDING_JOURNAL")
    try:
        local_file = sqlite_file(setting) if setting else None
        journal = open_journal(setting) if setting and (local_file is None or local_file.exists()) else None
        if journal is None:
            return None

        async def first_seen() -> datetime | None:
            try:
                history = await journal.history(request_id)
            finally:
                await journal.close()
            return history[0].at if history else None

        return asyncio.run(first_seen())
    except (JournalSettingError, AzureError, sqlite3.DatabaseError):
        return None  # the duplicate warning is a courtesy; the send decides
