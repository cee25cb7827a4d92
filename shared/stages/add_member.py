"""Stage 2: make sure the recipient is a member of the group.

Seeds, step 2: "add the mail contact to the distribution group" (Exchange, for distribution and
mail-enabled security groups: Graph cannot change their membership); for a Microsoft 365 group
the guest is added through Graph. An existing guest who already held the address (a mail contact
could not be made) is added to a distribution group by that address, a documented -Member form.
"Already a member" is success, so a rerun changes nothing; "not found" right after our own create
is replication lag and is retried. Exchange's warnings on the add reach the outcome.
"""

from __future__ import annotations

from shared.contracts import GroupKind, RecipientKind, StageMessage, StageName
from shared.decisions import Decision, PassOn
from shared.directory.errors import AlreadyExistsError, DirectoryError
from shared.envelope import Delivery
from shared.failures import decide_on_directory_error
from shared.progress import Progress, Turn
from shared.queues import next_stage
from shared.stages.admission import admitted
from shared.stages.dependencies import StageDependencies

STAGE = StageName.ADD_MEMBER


async def add_member(message: StageMessage, delivery: Delivery, deps: StageDependencies) -> Decision:
    checked = await admitted(STAGE, message, delivery, deps)
    if not isinstance(checked, StageMessage):
        return checked
    message = checked
    group, recipient = message.group, message.recipient
    progress = Progress.of(message)
    try:
        if group.kind is GroupKind.MICROSOFT_365:
            await deps.graph.add_group_member(group.id, recipient.id)
        else:
            member = (
                recipient.id if recipient.kind is RecipientKind.MAIL_CONTACT else str(message.request.external_email)
            )
            security_group = group.kind is GroupKind.MAIL_ENABLED_SECURITY
            warnings = await deps.exchange.add_distribution_group_member(
                group.mail, member, security_group=security_group
            )
            progress.warnings.extend(f"Add-DistributionGroupMember warned: {warning}" for warning in warnings)
    except AlreadyExistsError:
        progress.newly_added = False  # an earlier run (or a person) added it: the state we want, no new welcome
    except DirectoryError as error:
        turn = Turn(STAGE, delivery, deps.clock())
        return decide_on_directory_error(turn, progress, deps.retry, error, not_found_is_lag=True)
    return PassOn(next_stage(STAGE), progress.stage_message())
