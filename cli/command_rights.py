"""The rights each `onboard` command needs, stated once: its `--help` and docs/deploy.md ("Azure rights") say the same.

tests/test_cli.py holds the table in docs/deploy.md and every command's help to this.
"""

from __future__ import annotations

# What sending one request needs, whatever its action.
_ONE_REQUEST = (
    "Azure Service Bus Data Sender on create-contact; with --request-id also Data Receiver on "
    "create-contact (it peeks for a waiting duplicate) and, if ONBOARDING_JOURNAL is set, "
    "Storage Table Data Reader on the journal table; with --wait also Data Receiver on the "
    "outcome queue or the --reply-to queue (it peeks)."
)

COMMAND_RIGHTS: dict[str, str] = {
    "submit": _ONE_REQUEST,
    "offboard": _ONE_REQUEST,
    "update": _ONE_REQUEST,
    "bulk": (
        "Azure Service Bus Data Sender on create-contact; with --wait also Data Receiver on the "
        "outcome queue or the --reply-to queue (it peeks); with --check none."
    ),
    "status": (
        "Storage Table Data Reader on the journal table; with ServiceBusConnection set also Azure "
        "Service Bus Data Receiver on create-contact (an unknown id) and, with --watch, on every "
        "stage queue (it peeks) and Storage Table Data Reader on the roster table (the last drift sweep)."
    ),
    "leases": "Storage Table Data Reader on the lease table (the journal table's name followed by 'leases').",
    "drift": "Storage Table Data Reader on the roster table (the journal table's name followed by 'roster').",
    "dlq list": (
        "Azure Service Bus Data Receiver on each stage queue listed, and without --queue on drift, leases and doctor "
        "(it peeks the dead-letter sub-queues; a queue it cannot read is named as not read)."
    ),
    "dlq show": "Azure Service Bus Data Receiver on the --queue (it peeks the dead-letter sub-queue).",
    "dlq replay": (
        "Azure Service Bus Data Receiver and Data Sender on each stage queue replayed (it "
        "receives from the dead-letter sub-queue and sends to the queue itself)."
    ),
    "dlq purge": (
        "Azure Service Bus Data Receiver on each stage queue purged (it receives from the "
        "dead-letter sub-queue and completes)."
    ),
    "grant": "none in Azure; in Entra ID, Privileged Role Administrator (it assigns Graph app roles and a directory role).",
    "doctor": (
        "Azure Service Bus Data Sender on doctor and Data Receiver on the outcome queue or the --reply-to "
        "queue (it peeks), with --wait; Azure Service Bus Data Owner on the queues for their properties "
        "(that check is skipped without it); in Entra ID, Global Reader (it reads the identity's rights and the "
        "policy's groups)."
    ),
}


def rights_epilog(command: str) -> str:
    return f"Azure rights: {COMMAND_RIGHTS[command]}"
