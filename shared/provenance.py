"""Which recipients this app created: a stamp on the recipient itself, with the request that created it.

A mail contact carries it in an Exchange custom attribute (Set-MailContact -CustomAttributeN: the
Mail Recipients role, which the app holds through Exchange Recipient Administrator; sources in
docs/permissions.md). Offboarding deletes only a stamped recipient: one that was there before the
app (adopted) is never deleted, whatever it holds. A crash between New-MailContact and the stamp
leaves a contact that later runs see unstamped, so as adopted: kept, never wrongly deleted.
"""

from __future__ import annotations

# CustomAttribute1-15 are the organization's own; the app uses the last one (docs/microsoft-365-facts.md).
CONTACT_ATTRIBUTE = "CustomAttribute15"
_PREFIX = "m365-external-onboarding;created-by="


def stamp(request_id: str) -> str:
    """The attribute's value for a recipient created by `request_id` (at most 128 characters: within 1024)."""
    return _PREFIX + request_id


def created_by(value: str | None) -> str | None:
    """The request that created a recipient stamped with `value`; None for one the app did not create."""
    if value and value.startswith(_PREFIX) and len(value) > len(_PREFIX):
        return value[len(_PREFIX) :]
    return None
