"""Updating: the person's mail contact takes the request's display name and names, in the intake stage.

Set-Contact is idempotent, so a retry simply sets the same names again. The app changes only a
contact it created (its provenance stamp): an adopted contact is someone else's to rename, and a
guest's names are its Entra account's, which the app may not write (that needs User.ReadWrite.All,
which it is not granted). An address is the person's identity here, so an update never changes it:
a new address is refused (AddressChangeRefused), before anything is looked up.
"""

from __future__ import annotations

from shared import provenance
from shared.addresses import same_address
from shared.contracts import DeadLetterReason, OnboardingRequest, Recipient, RecipientKind
from shared.decisions import Decision
from shared.outcomes import dead_letter, finish, planned
from shared.progress import Progress, Turn
from shared.stages.admission import Refused, intake_group
from shared.stages.dependencies import StageDependencies

ADDRESS_CHANGE = (
    "An update cannot change the person's address: the address is the person's identity to this app. Send an "
    "offboard for the old address and an onboard for the new one."
)


async def update(request: OnboardingRequest, turn: Turn, progress: Progress, deps: StageDependencies) -> Decision:
    new_address = request.new_external_email
    if new_address is not None and not same_address(str(new_address), str(request.external_email)):
        return dead_letter(turn, progress, DeadLetterReason.ADDRESS_CHANGE_REFUSED, ADDRESS_CHANGE)
    group = await intake_group(request, deps)
    if isinstance(group, Refused):
        return dead_letter(turn, progress, group.reason, group.description)
    progress.group = group
    address = str(request.external_email)
    contact = await deps.exchange.find_mail_contact(address)
    if contact is None:
        user = await deps.graph.find_user_by_mail(address)
        refusal = (
            "No mail contact has this address, so there is nothing to update: onboard the person first."
            if user is None
            else "The address belongs to a user account (a guest or an internal user), whose names are its own "
            "in Entra: the app does not change them. Rename the account in Entra."
        )
        return dead_letter(turn, progress, DeadLetterReason.DIRECTORY_REJECTED, refusal)
    creator = provenance.created_by(contact.provenance)
    progress.recipient = Recipient(
        kind=RecipientKind.MAIL_CONTACT,
        id=contact.identity,
        created=creator is not None,
        directory_object_id=contact.external_directory_object_id,
    )
    if creator is None:
        return dead_letter(
            turn,
            progress,
            DeadLetterReason.DIRECTORY_REJECTED,
            "The mail contact was there before this app (adopted): the app changes only the contacts it created. "
            "Rename it in Exchange.",
        )
    if request.dry_run:
        return planned(turn, progress, "Dry run, nothing was changed. A real run would: set the contact's names.")
    await deps.exchange.set_contact_names(
        contact.identity,
        display_name=request.required_display_name,
        first_name=request.first_name,
        last_name=request.last_name,
    )
    progress.changes.append("Set the mail contact's display name and names")
    return finish(turn, progress, "The mail contact has the request's display name and names.")
