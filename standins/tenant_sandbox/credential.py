"""The client side of the sandbox's token endpoint: a credential that asks the sandbox, as the app asks Entra.

Lives with the stand-ins, not in the deployed package. The app uses it only when the local host
supplies it (shared.bootstrap.configure_services) and the settings say so with the local flag
ONBOARDING_ALLOW_SANDBOX_CREDENTIAL=true. The token says what the sandbox's directory grants the
service principal of `client_id` (token_face.py): nothing it was not granted.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from standins.tenant_sandbox.token_face import ADMINISTRATOR_GRANT

# Renew a cached token this long before it expires, as azure-identity does (it refreshes within 5 minutes).
REFRESH_MARGIN_SECONDS = 300


class SandboxCredential(AsyncTokenCredential):
    """Tokens from the sandbox at `authority` for the service principal whose appId is `client_id`.

    `client_id=None`: the sandbox's administrator (a delegated token, for `onboard grant`)."""

    def __init__(self, tenant_id: str, *, authority: str, client_id: str | None) -> None:
        self._url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self._client_id = client_id
        self._cache: dict[str, AccessToken] = {}
        self._lock = asyncio.Lock()

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        scope = scopes[0] if scopes else ""
        async with self._lock:
            cached = self._cache.get(scope)
            if cached is not None and cached.expires_on - REFRESH_MARGIN_SECONDS > time.time():
                return cached
            form = {"scope": scope}
            if self._client_id is None:
                form["grant_type"] = ADMINISTRATOR_GRANT
            else:
                form |= {"grant_type": "client_credentials", "client_id": self._client_id}
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    answer = await client.post(self._url, data=form)
                body = answer.json()
            except (httpx.HTTPError, ValueError) as error:
                raise ClientAuthenticationError(f"the tenant sandbox's token endpoint failed: {error}") from error
            if answer.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
                description = body.get("error_description") if isinstance(body, dict) else None
                raise ClientAuthenticationError(f"the tenant sandbox refused a token: {description or answer.text}")
            token = AccessToken(str(body["access_token"]), int(time.time()) + int(body["expires_in"]))
            self._cache[scope] = token
            return token

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
