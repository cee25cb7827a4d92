"""Stage 2: make sure the recipient is a member of the group.

Seeds, step 2: "add the mail contact to the distribution group" (Exchange, for distribution and
mail-enabled security groups: Graph cannot change their membership); for a Microsoft 365 group
the guest is added through Graph. An existing guest who already held the address (a mail contact
could not be made) is added to a distribution group by that address, a documented -Member form.
"Already a member" is success, so a rerun changes nothing; "not found" right after our own create
is replication lag: waited out within the invocation for a moment, then retried on a schedule.
Exchange's warnings on the add reach the outcome.
"""

from __future__ import annotations

from shared.contracts import GroupKind, RecipientKind, StageMessage, StageName
from shared.decisions import Decision, PassOn
from shared.directory.errors import AlreadyExistsError, DirectoryError, NotFoundError
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error
from shared.progress import Progress, Turn
from shared.queues import next_stage
from shared.stages.admission import admitted
from shared.stages.dependencies import StageDependencies

STAGE = StageName.ADD_MEMBER
# A contact or guest created a moment ago is often not visible to the add yet (replication lag,
# docs/microsoft-365-facts.md section 3), and usually is within a second or two. The add is tried
# again every quarter second within the invocation, for 2 s at most (as long as the in-process wait
# for a short Retry-After): whatever the lag, it is met within a quarter second, at four adds per
# second of lag. A longer lag becomes a scheduled retry. A scheduled retry re-reads the recipient and
# waits a jittered backoff: later, and no fewer calls (docs/performance.md, "Latency").
REPLICATION_PAUSES_SECONDS = (0.25,) * 8


async def add_member(message: StageMessage, delivery: Delivery, deps: StageDependencies) -> Decision:
    checked = await admitted(STAGE, message, delivery, deps)
    if not isinstance(checked, StageMessage):
        return checked
    message = checked
    progress = Progress.of(message)
    try:
        for pause in (*REPLICATION_PAUSES_SECONDS, None):
            try:
                await _add(message, progress, deps)
                break
            except NotFoundError:
                if pause is None:
                    raise
                await deps.sleep(pause)
    except AlreadyExistsError:
        progress.newly_added = False  # an earlier run (or a person) added it: the state we want, no new welcome
    except DirectoryError as error:
        turn = Turn(STAGE, delivery, deps.clock())
        return decide_on_directory_error(turn, progress, deps.retry, error, not_found_is_lag=True)
    return PassOn(next_stage(STAGE), progress.stage_message())


async def _add(message: StageMessage, progress: Progress, deps: StageDependencies) -> None:
    group, recipient = message.group, message.recipient
    if group.kind is GroupKind.MICROSOFT_365:
        await deps.graph.add_group_member(group.id, recipient.id)
        return
    member = recipient.id if recipient.kind is RecipientKind.MAIL_CONTACT else str(message.request.external_email)
    security_group = group.kind is GroupKind.MAIL_ENABLED_SECURITY
    warnings = await deps.exchange.add_distribution_group_member(group.mail, member, security_group=security_group)
    progress.warnings.extend(f"Add-DistributionGroupMember warned: {warning}" for warning in warnings)
