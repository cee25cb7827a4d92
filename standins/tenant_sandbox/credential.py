"""Tokens for the tenant sandbox: unsigned, JWT-shaped, accepted by nothing but the sandbox.

Lives with the stand-ins, not in the deployed package. The app uses it only when the local host
supplies it (shared.bootstrap.configure_services) and the settings say so with the local flag
ONBOARDING_ALLOW_SANDBOX_CREDENTIAL=true.
"""

from __future__ import annotations

import base64
import json
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

TOKEN_LIFETIME_SECONDS = 3600


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def resource_of(scope: str) -> str:
    """https://graph.microsoft.com/.default -> https://graph.microsoft.com (a token's audience)."""
    parsed = urlparse(scope)
    return f"{parsed.scheme}://{parsed.netloc}"


def mint_sandbox_token(audience: str, tenant_id: str, expires_on: int) -> str:
    """An unsigned JWT-shaped token with the claims the sandbox checks (aud, tid, exp)."""
    payload = {"aud": audience, "tid": tenant_id, "exp": expires_on}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."


class SandboxCredential(AsyncTokenCredential):
    """Unsigned, JWT-shaped tokens that only the local tenant sandbox accepts.

    They carry the audience (aud) and tenant (tid) a real token would, so the sandbox can refuse
    a Graph token at the Exchange endpoint just as Microsoft does.
    """

    def __init__(self, tenant_id: str) -> None:
        self._tenant_id = tenant_id

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        expires_on = int(time.time()) + TOKEN_LIFETIME_SECONDS
        audience = resource_of(scopes[0]) if scopes else ""
        return AccessToken(mint_sandbox_token(audience, self._tenant_id, expires_on), expires_on)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> SandboxCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None
