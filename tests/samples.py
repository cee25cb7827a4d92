"""Sample requests for the tests, from the demo policy's source system and the demo tenant's groups."""

from __future__ import annotations

import json
from typing import Any

from tools.demo import demo_request as sample_request

PARTNERS = "partners@contoso.com"  # a distribution group in the demo tenant

__all__ = ["PARTNERS", "sample_request", "sample_request_json"]


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
