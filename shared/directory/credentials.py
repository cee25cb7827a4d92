"""Where directory tokens come from in Azure: the app's managed identity (or DefaultAzureCredential).

The sandbox's unsigned tokens are a stand-in matter (standins/tenant_sandbox/credential.py): the
local host supplies that credential; production settings cannot build it.
"""

from __future__ import annotations

from typing import Literal

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential


def build_credential(kind: Literal["managed-identity", "default"], *, client_id: str | None) -> AsyncTokenCredential:
    if kind == "managed-identity":
        return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    return DefaultAzureCredential()
