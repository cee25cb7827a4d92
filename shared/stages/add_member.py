"""Stage 2: make sure the recipient is a member of the group.

Seeds, step 2: "add the mail contact to the distribution group" (Exchange, for distribution and
mail-enabled security groups: Graph cannot change their membership); for a Microsoft 365 group
the guest is added through Graph. "Already a member" is success, so a rerun changes nothing;
"not found" right after our own create is replication lag and is retried.
"""

from __future__ import annotations

from shared.contracts import GroupKind, StageMessage, StageName
from shared.decisions import Decision, Delivery, PassOn
from shared.directory.errors import AlreadyExistsError, DirectoryError
from shared.failures import decide_on_directory_error
from shared.progress import Progress, Turn
from shared.stages.dependencies import StageDependencies

STAGE = StageName.ADD_MEMBER


async def add_member(message: StageMessage, delivery: Delivery, deps: StageDependencies) -> Decision:
    group, recipient = message.group, message.recipient
    try:
        if group.kind is GroupKind.MICROSOFT_365:
            await deps.graph.add_group_member(group.id, recipient.id)
        else:
            await deps.exchange.add_distribution_group_member(group.mail, recipient.id)
    except AlreadyExistsError:
        pass  # an earlier run (or a person) already added it: the state we want
    except DirectoryError as error:
        turn = Turn(STAGE, delivery, deps.clock())
        return decide_on_directory_error(turn, Progress.of(message), deps.retry, error, not_found_is_lag=True)
    return PassOn(StageName.VERIFY_DELIVERY, message)
