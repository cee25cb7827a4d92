"""Sample requests for the tests, from the demo policy's source system and the demo tenant's groups."""

from __future__ import annotations

import json
from typing import Any

from shared.contracts import GroupRef, OnboardingRequest

PARTNERS = "partners@contoso.com"  # a distribution group in the demo tenant


def sample_request(request_id: str, email: str, name: str, group: str = PARTNERS) -> OnboardingRequest:
    """A valid request for `name` <`email`> into `group` (an SMTP address)."""
    first, _, last = name.partition(" ")
    return OnboardingRequest(
        request_id=request_id,
        external_email=email,
        display_name=name,
        first_name=first,
        last_name=last or None,
        group=GroupRef(smtp_address=group),
        source_system="demo-hr",
    )


def sample_request_json(**overrides: Any) -> bytes:
    """A request body as upstream sends it; `overrides` replace or add fields (also invalid ones)."""
    body: dict[str, Any] = {
        "external_email": "jordan.reyes@fabrikam.example",
        "display_name": "Jordan Reyes",
        "group": {"smtp_address": PARTNERS},
        "source_system": "demo-hr",
    }
    body.update(overrides)
    return json.dumps(body).encode()
