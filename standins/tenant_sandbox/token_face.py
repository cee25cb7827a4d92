"""The issuing side: Entra's token endpoint for this tenant, as the client-credentials flow calls it.

`POST /{tenant}/oauth2/v2.0/token` with `client_id` and `scope=<resource>/.default` answers an
app-only access token for the service principal whose appId is `client_id`. As Entra does, the
token's `roles` are the app roles the resource's service principal has granted to the caller (its
appRoleAssignments), and `wids` the template ids of the caller's directory roles; `idtyp` is "app".
So `onboard grant` run against the sandbox is what gives the local host its rights, and a grant
reaches a running app only with its next token. The sandbox's administrator (the person who runs
`onboard grant`) gets a delegated token through `grant_type=urn:sandbox:administrator`, standing in
for an interactive sign-in. Tokens are unsigned (alg none): the faces read their claims and decide
from `roles`, `scp` and `wids` alone. Sources: docs/permissions.md ("Access tokens").
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from standins.tenant_sandbox.authority import ACCESS_AS_USER, GLOBAL_ADMINISTRATOR
from standins.tenant_sandbox.grants_face import EXCHANGE_APP_ID, GRAPH_APP_ID, Grants

TOKEN_LIFETIME_SECONDS = 3600
TOKEN_PATH = "/{tenant}/oauth2/v2.0/token"  # noqa: S105 (a path, not a secret)
ADMINISTRATOR_GRANT = "urn:sandbox:administrator"
ADMINISTRATOR_OBJECT_ID = "00000000-0000-0000-0000-00000000ad01"
# The Azure CLI's first-party app id: an administrator's `az login` token names it as the client.
AZURE_CLI_APP_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
# A resource's audience as Entra writes it in a v1 token, and the resource's first-party app id.
RESOURCES = {"https://graph.microsoft.com": GRAPH_APP_ID, "https://outlook.office365.com": EXCHANGE_APP_ID}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def encode_token(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token carrying `claims`."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def resource_of(scope: str) -> str:
    """https://graph.microsoft.com/.default -> https://graph.microsoft.com (a token's audience)."""
    parsed = urlparse(scope)
    return f"{parsed.scheme}://{parsed.netloc}"


def token_claims(
    tenant_id: str,
    audience: str,
    *,
    object_id: str,
    app_id: str,
    roles: list[str] | None = None,
    wids: list[str] | None = None,
    scopes: str | None = None,
    lifetime: int = TOKEN_LIFETIME_SECONDS,
) -> dict[str, Any]:
    """The claims Entra puts in an access token: app-only unless `scopes` (delegated) is given."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "tid": tenant_id,
        "oid": object_id,
        "sub": object_id,
        "appid": app_id,
        "idtyp": "user" if scopes is not None else "app",
        "ver": "1.0",
    }
    if roles:
        claims["roles"] = roles  # Entra leaves the claim out when nothing is granted
    if wids:
        claims["wids"] = wids
    if scopes is not None:
        claims["scp"] = scopes
    return claims


def _oauth_error(error: str, code: int, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}",
            "error_codes": [code],
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
        status_code=status,
    )


class TokenFace:
    def __init__(self, tenant_id: str, grants: Grants) -> None:
        self.tenant_id = tenant_id
        self.grants = grants

    def routes(self) -> list[Route]:
        return [Route(TOKEN_PATH, self.token, methods=["POST"])]

    def app_token_claims(self, app_id: str, audience: str) -> dict[str, Any] | None:
        """What Entra would issue to the service principal of `app_id` for `audience`; None when unknown."""
        principal = self.grants.by_app_id(app_id)
        resource = self.grants.by_app_id(RESOURCES[audience]) if audience in RESOURCES else None
        if principal is None or resource is None:
            return None
        role_values = {role_id: value for value, role_id in resource.app_roles.items()}
        roles = sorted(
            role_values[a.app_role_id]
            for a in self.grants.assignments_of(principal.id)
            if a.resource_id == resource.id and a.app_role_id in role_values
        )
        wids = sorted({r.role_definition_id for r in self.grants.roles_of(principal.id) if r.directory_scope_id == "/"})
        return token_claims(self.tenant_id, audience, object_id=principal.id, app_id=app_id, roles=roles, wids=wids)

    async def token(self, request: Request) -> Response:
        if request.path_params["tenant"] not in (self.tenant_id, "organizations"):
            return _oauth_error(
                "invalid_request", 90002, f"Tenant '{request.path_params['tenant']}' not found.", status=400
            )
        # application/x-www-form-urlencoded, read without Starlette's optional multipart dependency
        form = {name: values[0] for name, values in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        grant_type, scope = form.get("grant_type", ""), form.get("scope", "")
        audience = resource_of(scope.split()[0]) if scope.strip() else ""
        if audience not in RESOURCES or not scope.split()[0].endswith("/.default"):
            return _oauth_error(
                "invalid_scope", 1002012, f"The provided value for scope {scope} is not valid.", status=400
            )
        if grant_type == ADMINISTRATOR_GRANT:
            claims = token_claims(
                self.tenant_id,
                audience,
                object_id=ADMINISTRATOR_OBJECT_ID,
                app_id=AZURE_CLI_APP_ID,
                wids=[GLOBAL_ADMINISTRATOR],
                scopes=ACCESS_AS_USER,
            )
        elif grant_type == "client_credentials":
            client_id = form.get("client_id", "")
            found = self.app_token_claims(client_id, audience)
            if found is None:
                return _oauth_error(
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'.",
                )
            claims = found
        else:
            return _oauth_error("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "ext_expires_in": TOKEN_LIFETIME_SECONDS,
                "access_token": encode_token(claims),
            }
        )
