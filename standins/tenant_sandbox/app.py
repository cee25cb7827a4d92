"""The sandbox's HTTP app: both faces behind one gate (auth, knobs, request log), plus /_sandbox admin.

Order for each Microsoft request: authenticate as the face would (401), then the gate's verdict
(latency, then a scripted fault, token bucket or random 5xx), then the face. Every answer is
logged with the face, the operation (cmdlet name or Graph route) and its status. /_sandbox is the
admin endpoint, outside the Microsoft paths, for changing knobs and reading the log while it runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from standins.tenant_sandbox.authority import (
    INSUFFICIENT_PRIVILEGES,
    MANAGE_AS_APP,
    Caller,
    ObjectKind,
    cmdlets_of,
    exchange_roles,
    graph_rights,
)
from standins.tenant_sandbox.exchange_face import CONCURRENCY_LIMIT_ANSWER, MAX_PAGE_SIZE, ExchangeFace, exchange_error
from standins.tenant_sandbox.grants_face import Grants, GrantsFace
from standins.tenant_sandbox.graph_face import GraphFace, graph_error
from standins.tenant_sandbox.knobs import Face, Gate, Knobs, RateLimit, ScriptedFault, Verdict
from standins.tenant_sandbox.model import Directory
from standins.tenant_sandbox.token_face import TokenFace

# A token's aud: the resource URI or the first-party app id, as Entra issues either.
AUDIENCES: dict[Face, frozenset[str]] = {
    "graph": frozenset({"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"}),
    "exchange": frozenset({"https://outlook.office365.com", "00000002-0000-0ff1-ce00-000000000000"}),
}
ADMIN_PREFIX = "/_sandbox"
_GRAPH_ERRORS = {
    400: ("Request_BadRequest", "The request was rejected (injected by the sandbox)."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    500: ("generalException", "An unexpected error occurred."),
    502: ("badGateway", "The server received an invalid response from an upstream server."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("gatewayTimeout", "The operation timed out."),
}


class LoggedRequest(NamedTuple):
    face: str
    operation: str  # a cmdlet name, or "METHOD /v1.0/route/{id}"
    status: int
    seconds: float
    at: float = 0.0  # Unix time the request arrived (benchmarks read the log as a timeline)


class RequestLog:
    """Thread-safe: the app appends on uvicorn's thread while tests and benchmarks read."""

    def __init__(self, keep: int = 100_000) -> None:
        # Bounded: `onboard sandbox` may run for days; the newest entries are the ones to read.
        self._entries: deque[LoggedRequest] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def forget_since(self, count: int) -> None:
        """Drop the entries appended after the log held `count` (set-up calls a reader should not see)."""
        with self._lock:
            while len(self._entries) > count:
                self._entries.pop()

    def __iter__(self) -> Any:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def __getitem__(self, index: int) -> LoggedRequest:
        return self.entries()[index]


def _claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT-shaped token, or None when it is not one. Signatures are not checked here."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def read_token(request: Request, face: Face, tenant_id: str) -> tuple[dict[str, Any], None] | tuple[None, Response]:
    """The token's claims, or Microsoft's 401 for a missing, malformed, wrong-audience, wrong-tenant or expired one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    claims = _claims(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if scheme.lower() != "bearer" or not token.strip():
        problem = "Access token is empty."
    elif claims is None:
        problem = "IDX14100: JWT is not well formed, there are no dots (.) or the payload is not JSON."
    elif claims.get("aud") not in AUDIENCES[face]:
        problem = "Access token validation failure. Invalid audience."
    elif claims.get("tid") != tenant_id:
        problem = "Access token validation failure. Invalid tenant."
    elif not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        problem = "Lifetime validation failed, the token is expired."
    else:
        return claims, None
    if face == "graph":
        return None, graph_error(request, 401, "InvalidAuthenticationToken", problem)
    return None, JSONResponse(
        {"error": {"code": "Unauthorized", "message": problem}},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def _caller_hung_up(_request: Request, _error: Exception) -> Response:
    """A caller that goes away mid-request (a cancelled invocation) is no error of the sandbox's."""
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it


def _verdict_response(request: Request, face: Face, verdict: Verdict, tenant_id: str, app: str) -> Response:
    status = verdict.status
    assert status is not None
    if verdict.too_many_in_flight:  # Exchange's plain text, without Retry-After
        return Response(CONCURRENCY_LIMIT_ANSWER, status_code=status, media_type="text/plain")
    if status == 429:
        if face == "graph":
            response: Response = graph_error(
                request, 429, "TooManyRequests", "Too many requests, please retry after the time in Retry-After."
            )
            # <Scope>/<Limit>/<ApplicationId>/<TenantId> (throttling-limits, identity and access)
            response.headers["x-ms-throttle-scope"] = f"Tenant_Application/ReadWrite/{app}/{tenant_id}"
            response.headers["x-ms-throttle-information"] = "ResourceUnitLimitExceeded"
        else:
            response = JSONResponse(
                {"error": {"code": "TooManyRequests", "message": "Too many requests."}}, status_code=429
            )
        response.headers["Retry-After"] = str(verdict.retry_after or 1)
        return response
    if face == "graph":
        code, message = _GRAPH_ERRORS[status]
        response = graph_error(request, status, code, message)
    else:
        response = _exchange_fault(status, verdict.fault)
    if verdict.retry_after is not None:
        response.headers["Retry-After"] = str(verdict.retry_after)
    return response


_EXCHANGE_FAULTS = {
    400: (
        "BadRequest",
        "Microsoft.Exchange.Configuration.Tasks.TaskException",
        "The request was rejected (injected by the sandbox).",
    ),
    403: (
        "Forbidden",
        "System.UnauthorizedAccessException",
        "The caller does not have a role that allows this cmdlet.",
    ),
}


def _exchange_fault(status: int, fault: ScriptedFault | None) -> Response:
    """An injected Exchange failure, in the shape the scripted fault asks for."""
    body = fault.body if fault else "json"
    if body == "undecodable":
        # A live 403 for a missing role came back as a run of NUL bytes.
        return Response(b"\x00" * 4096, status_code=status, media_type="application/octet-stream")
    if body == "concurrency_limit":
        return Response(CONCURRENCY_LIMIT_ANSWER, status_code=status, media_type="text/plain")
    exception_type = fault.exception_type if fault else None
    if status in _EXCHANGE_FAULTS or exception_type:
        code, default_type, text = _EXCHANGE_FAULTS.get(status, ("InternalServerError", "", "The cmdlet failed."))
        type_in = fault.type_in if fault else "everywhere"
        return exchange_error(status, code, exception_type or default_type, text, type_in=type_in)
    # An outage names no cmdlet exception: the service, not the command, failed.
    error = {"code": "ServiceUnavailable", "message": "The service is unavailable."}
    return JSONResponse({"error": error}, status_code=status)


def _cmdlet_ended(limit: float) -> Response:
    """Exchange's answer when it ends a cmdlet that ran past its limit (shape unconfirmed: a gateway timeout)."""
    text = f"The operation did not complete within {limit:g} seconds and was ended by the server."
    return JSONResponse({"error": {"code": "GatewayTimeout", "message": text}}, status_code=504)


def _rate_limit_headers(state: RateLimit) -> dict[str, str]:
    """What Exchange says about its budget on each answer (ExoHelper reads Rate-Limit-Remaining and -Reset)."""
    reset = datetime.now(UTC) + timedelta(seconds=state.reset_in_seconds)
    return {
        "Rate-Limit-Limit": str(state.limit),
        "Rate-Limit-Remaining": str(state.remaining),
        "Rate-Limit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }


class Admin:
    """/_sandbox: the knobs and the request log, over HTTP, for `onboard sandbox` and benchmarks."""

    def __init__(self, directory: Directory, gate: Gate, log: RequestLog) -> None:
        self.directory, self.gate, self.log = directory, gate, log

    def routes(self) -> list[Route]:
        return [
            Route(f"{ADMIN_PREFIX}/knobs", self.get_knobs, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/knobs", self.put_knobs, methods=["PUT", "PATCH"]),
            Route(f"{ADMIN_PREFIX}/faults", self.get_faults, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/faults", self.add_fault, methods=["POST"]),
            Route(f"{ADMIN_PREFIX}/faults", self.clear_faults, methods=["DELETE"]),
            Route(f"{ADMIN_PREFIX}/settings", self.get_settings, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/settings", self.change_settings, methods=["PATCH"]),
            Route(f"{ADMIN_PREFIX}/requests", self.get_requests, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/requests", self.clear_requests, methods=["DELETE"]),
        ]

    async def get_knobs(self, request: Request) -> Response:
        return JSONResponse(self.gate.knobs.model_dump(mode="json"))

    async def put_knobs(self, request: Request) -> Response:
        """PUT replaces every knob; PATCH changes only the ones given."""
        try:
            changes = await request.json()
            base = self.gate.knobs.model_dump() if request.method == "PATCH" else {}
            knobs = Knobs.model_validate({**base, **changes})
        except ValidationError as error:
            return JSONResponse({"error": error.errors(include_url=False, include_context=False)}, status_code=422)
        except (ValueError, TypeError):
            return JSONResponse({"error": "the body must be a JSON object of knobs"}, status_code=422)
        apply_knobs(self.directory, self.gate, knobs)
        return JSONResponse(knobs.model_dump(mode="json"))

    async def get_settings(self, request: Request) -> Response:
        return JSONResponse(asdict(self.directory.settings))

    async def change_settings(self, request: Request) -> Response:
        """The tenant's external collaboration and guest settings, as an administrator changes them."""
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError
            settings = self.directory.change_settings(**changes)
        except ValidationError as error:
            return JSONResponse({"error": error.errors(include_url=False, include_context=False)}, status_code=422)
        except (ValueError, TypeError):
            return JSONResponse({"error": "the body must be a JSON object of settings"}, status_code=422)
        return JSONResponse(asdict(settings))

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse([fault.model_dump(mode="json") for fault in self.gate.pending_script()])

    async def add_fault(self, request: Request) -> Response:
        try:
            faults = TypeAdapter(list[ScriptedFault] | ScriptedFault).validate_json(await request.body())
        except ValidationError as error:
            return JSONResponse({"error": error.errors(include_url=False, include_context=False)}, status_code=422)
        for fault in faults if isinstance(faults, list) else [faults]:
            self.gate.script(fault)
        return JSONResponse([fault.model_dump(mode="json") for fault in self.gate.pending_script()], status_code=201)

    async def clear_faults(self, request: Request) -> Response:
        self.gate.clear_script()
        return Response(status_code=204)

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse([entry._asdict() for entry in self.log.entries()])

    async def clear_requests(self, request: Request) -> Response:
        self.log.clear()
        return Response(status_code=204)


# Exchange's answer to a token without Exchange.ManageAsApp: 401, the reason only in a header.
NO_PERMISSIONS_DIAGNOSTICS = (
    '2000008;reason="The token contains no permissions, or permissions can not be understood.";'
    'error_category="invalid_grant"'
)
SEND_MAIL_ROUTE = ("POST", "/v1.0/users/{id}/sendMail")


class Authority:
    """Decides, from the token's claims alone, whether the caller may make this call (authority.py)."""

    def __init__(self, directory: Directory, grants: Grants, exchange: ExchangeFace) -> None:
        self.directory, self.grants, self.exchange_face = directory, grants, exchange

    def _kind(self, object_id: str) -> ObjectKind | None:
        """The kind of a directory object Graph can see; None for one it cannot (yet): the route's 404 answers."""
        user, contact = self.directory.users.get(object_id), self.directory.contacts.get(object_id)
        if user is not None:
            return "user" if self.directory.replicated(user) else None
        if object_id in self.directory.groups:
            return "group"
        if contact is not None:
            return "orgContact" if self.directory.replicated(contact) else None
        return "servicePrincipal" if object_id in self.grants.principals else None

    def _exchange_assignments(self, caller: Caller) -> list[tuple[str, str | None]]:
        return [(a.role, a.recipient_scope) for a in self.grants.exchange_roles_of(caller.object_id)]

    def _sends_as_scoped_mailbox(self, request: Request, caller: Caller) -> bool:
        """RBAC for Applications: "Application Mail.Send" for the sending mailbox, kept on the Exchange side."""
        sender = str(request.path_params.get("id", "")).lower()
        return any(
            role == "Application Mail.Send" and (scope is None or scope.lower() == sender)
            for role, scope in self._exchange_assignments(caller)
        )

    def check_graph(self, request: Request, route: Route | None, caller: Caller) -> Response | None:
        if route is None:
            return None
        key = (request.method, route.path)
        object_id = str(request.path_params.get("id", "")) if "id" in request.path_params else None
        with self.directory.lock:
            kind = self._kind(object_id) if object_id is not None else None
        rights = graph_rights(request.method, route.path, kind)
        if rights is None or rights.allow(caller):
            return None
        if key == SEND_MAIL_ROUTE and caller.app_only and self._sends_as_scoped_mailbox(request, caller):
            return None
        return graph_error(request, 403, "Authorization_RequestDenied", INSUFFICIENT_PRIVILEGES)

    def roles_in_exchange(self, caller: Caller) -> frozenset[str]:
        groups = frozenset(role for role, scope in self._exchange_assignments(caller) if scope is None)
        return exchange_roles(caller, groups)

    def check_exchange(self, cmdlet: str, caller: Caller) -> Response | None:
        """Exchange.ManageAsApp first, then a role holding the cmdlet (docs/permissions.md, "Exchange answers")."""
        if MANAGE_AS_APP not in caller.roles:
            return Response(status_code=401, headers={"x-ms-diagnostics": NO_PERMISSIONS_DIAGNOSTICS})
        if cmdlet in self.exchange_face.cmdlets and cmdlet not in cmdlets_of(self.roles_in_exchange(caller)):
            text = f"User is not allowed to call {cmdlet}"
            inner = {"message": text, "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"}
            return JSONResponse(
                {"error": {"code": "Unauthorized", "message": text, "innererror": inner}}, status_code=401
            )
        return None


def apply_knobs(directory: Directory, gate: Gate, knobs: Knobs) -> None:
    with directory.lock:
        directory.knobs = knobs
    gate.knobs = knobs


def build_app(
    directory: Directory, log: RequestLog, gate: Gate, *, page_size: int = 100, exchange_page_size: int = MAX_PAGE_SIZE
) -> Starlette:
    graph = GraphFace(directory, page_size)
    exchange = ExchangeFace(directory, page_size, exchange_page_size)
    admin = Admin(directory, gate, log)
    grants = GrantsFace(Grants(directory.store))  # what `onboard grant` calls
    graph_routes = graph.routes() + grants.routes()
    tenant_id = directory.tenant.id
    tokens = TokenFace(tenant_id, grants.grants)
    authority = Authority(directory, grants.grants, exchange)

    def graph_route(request: Request) -> Route | None:
        for route in graph_routes:
            match, child_scope = route.matches(request.scope)
            if match is Match.FULL:
                request.scope["path_params"] = child_scope.get("path_params", {})
                return route
        return None

    async def cmdlet_of(request: Request) -> str:
        try:
            return str(json.loads(await request.body())["CmdletInput"]["CmdletName"])
        except (ValueError, KeyError, TypeError, ClientDisconnect):  # the route meets a hang-up again
            return "InvokeCommand"

    async def gate_and_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(ADMIN_PREFIX) or "/oauth2/" in request.url.path:
            return await call_next(request)  # the admin endpoint and Entra's token endpoint: no gate
        started, arrived = time.perf_counter(), time.time()
        face: Face = "graph" if request.url.path.startswith("/v1.0") else "exchange"
        route = graph_route(request) if face == "graph" else None
        operation = (
            await cmdlet_of(request)
            if face == "exchange"
            else f"{request.method} {route.path if route else request.url.path}"
        )
        claims, response = read_token(request, face, tenant_id)
        app = str(claims.get("appid", "")) if claims is not None else ""
        if claims is not None:
            caller = Caller.from_claims(claims)
            request.state.caller = caller  # a face may decide by who calls (invitations: app-only or not)
            if face == "graph":
                response = authority.check_graph(request, route, caller)
            else:
                response = authority.check_exchange(operation, caller)
                request.state.exchange_roles = authority.roles_in_exchange(caller)
        if response is None and not gate.admit(face):  # past the tenant's Exchange concurrency limit
            verdict = gate.too_many_in_flight()
            await asyncio.sleep(verdict.delay_seconds)
            response = _verdict_response(request, face, verdict, tenant_id, app)
        elif response is None:
            verdict = gate.decide(face, operation, app)
            try:
                response = await _answer(request, face, verdict, app, call_next)
            finally:
                gate.leave(face)
            if face == "graph":
                response.headers["x-ms-resource-unit"] = "1"
                if verdict.throttle_percentage is not None and verdict.throttle_percentage >= 80:
                    response.headers["x-ms-throttle-limit-percentage"] = f"{verdict.throttle_percentage / 100:.1f}"
        log.append(LoggedRequest(face, operation, response.status_code, time.perf_counter() - started, arrived))
        return response

    async def _answer(
        request: Request,
        face: Face,
        verdict: Verdict,
        app: str,
        call_next: Callable[[Request], Awaitable[Response]],
    ) -> Response:
        # Half the latency before the face acts and half after, as on a real network: a write
        # is done while its caller still waits for the answer (a caller can die in between).
        # Exchange ends a cmdlet that runs past its limit on its side, acted on or not.
        limit = gate.knobs.exchange_cmdlet_timeout_seconds
        half = verdict.delay_seconds / 2
        ended = face == "exchange" and verdict.delay_seconds > limit
        await asyncio.sleep(min(half, limit) if ended else half)
        if ended and half >= limit:
            response = _cmdlet_ended(limit)
        elif verdict.status == 200 and verdict.fault is not None:
            request.state.adminapi_warnings = verdict.fault.warnings  # the face acts, then warns
            response = await call_next(request)
        elif verdict.status is not None:
            response = _verdict_response(request, face, verdict, tenant_id, app)
        else:
            response = await call_next(request)
        if ended and half < limit:
            await asyncio.sleep(limit - half)
            response = _cmdlet_ended(limit)  # the cmdlet acted; its answer is lost
        elif not ended:
            await asyncio.sleep(half)
        if face == "exchange" and verdict.rate_limit is not None:
            response.headers.update(_rate_limit_headers(verdict.rate_limit))
        return response

    app = Starlette(
        routes=graph_routes + exchange.routes() + tokens.routes() + admin.routes() + grants.admin_routes(ADMIN_PREFIX),
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=gate_and_log)],
        exception_handlers={ClientDisconnect: _caller_hung_up},
    )
    graph.app = app
    app.state.grants = grants.grants
    app.state.tokens = tokens
    return app
