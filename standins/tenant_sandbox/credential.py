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
from typing import Any, Self

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from standins.tenant_sandbox.authority import EXCHANGE_ADMINISTRATOR, MANAGE_AS_APP, every_permission
from standins.tenant_sandbox.token_face import (
    ADMINISTRATOR_GRANT,
    TOKEN_LIFETIME_SECONDS,
    encode_token,
    resource_of,
    token_claims,
)

# Renew a cached token this long before it expires, as azure-identity does (it refreshes within 5 minutes).
REFRESH_MARGIN_SECONDS = 300


class _HoldsNothing(AsyncTokenCredential):
    """A credential with nothing to close (each request opens its own HTTP client)."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None


class SandboxCredential(_HoldsNothing):
    """Tokens from the sandbox at `authority` for the service principal whose appId is `client_id`."""

    def __init__(self, tenant_id: str, *, authority: str, client_id: str) -> None:
        self._url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
        self._client_id: str | None = client_id
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

    @classmethod
    def administrator(cls, tenant_id: str, *, authority: str) -> SandboxCredential:
        """The sandbox's administrator (a delegated token, as an operator's `az login`): for `onboard grant`."""
        credential = cls(tenant_id, authority=authority, client_id="")
        credential._client_id = None
        return credential


def full_rights_claims(
    tenant_id: str,
    audience: str,
    *,
    roles: tuple[str, ...] | None = None,
    wids: tuple[str, ...] | None = None,
    lifetime: int = TOKEN_LIFETIME_SECONDS,
) -> dict[str, Any]:
    """A tester's token claims: every right the sandbox checks for `audience` unless `roles`/`wids` say which."""
    if roles is None:
        roles = tuple(sorted(every_permission())) if audience == "https://graph.microsoft.com" else (MANAGE_AS_APP,)
    return token_claims(
        tenant_id,
        audience,
        object_id="sandbox-tester",
        app_id="sandbox-tester",
        roles=list(roles),
        wids=list(wids if wids is not None else (EXCHANGE_ADMINISTRATOR,)),
        lifetime=lifetime,
    )


class FullRightsCredential(_HoldsNothing):
    """Tokens minted here, not asked of the issuing side, holding every right the sandbox checks.

    For testing the sandbox's own answers (a route's shape, a refused audience or tenant) and
    clients that never reach it; never for the product, whose rights come from `onboard grant`."""

    def __init__(self, tenant_id: str, *, expires_in: int = TOKEN_LIFETIME_SECONDS) -> None:
        self._tenant_id = tenant_id
        self._expires_in = expires_in

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        minted = full_rights_claims(
            self._tenant_id, resource_of(scopes[0]) if scopes else "", lifetime=self._expires_in
        )
        return AccessToken(encode_token(minted), int(minted["exp"]))
