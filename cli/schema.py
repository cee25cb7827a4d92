"""`onboard schema`: the JSON Schema of contract v1 (request, stage message, outcome event)."""

from __future__ import annotations

import json

from shared.contracts import contract_schemas


def schema_text() -> str:
    return json.dumps(contract_schemas(), indent=2, sort_keys=True) + "\n"
