"""TenantSandbox: the model plus both faces served by uvicorn on a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from standins.tenant_sandbox.app import AUDIENCES, RequestLog, apply_knobs, build_app
from standins.tenant_sandbox.credential import full_rights_claims
from standins.tenant_sandbox.exchange_face import ANCHOR_MAILBOX, MAX_PAGE_SIZE
from standins.tenant_sandbox.grants_face import Grants
from standins.tenant_sandbox.knobs import Face, Gate, Knobs, ScriptedFault
from standins.tenant_sandbox.model import Directory, TenantSeed
from standins.tenant_sandbox.store import DocumentStore
from standins.tenant_sandbox.token_face import encode_token

START_TIMEOUT = 10.0


class TenantSandbox:
    def __init__(
        self,
        seed: TenantSeed,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = 100,
        exchange_page_size: int = MAX_PAGE_SIZE,
        knobs: Knobs | None = None,
        database: Path | None = None,
    ) -> None:
        """`database`: a SQLite file that keeps the tenant across restarts; None is a fresh in-memory tenant.
        `page_size`: rows per page, both faces; `exchange_page_size`: the most an Exchange caller may ask
        for with `Prefer: odata.maxpagesize`."""
        self.seed = seed
        self.host = host
        self.gate = Gate(knobs)
        self.directory = Directory(seed, DocumentStore(database or ":memory:"), self.gate.knobs)
        self.request_log = RequestLog()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        app = build_app(
            self.directory, self.request_log, self.gate, page_size=page_size, exchange_page_size=exchange_page_size
        )
        self.grants: Grants = app.state.grants  # service principals and role assignments
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def graph_base_url(self) -> str:
        return self.base_url + "/v1.0"

    @property
    def exchange_base_url(self) -> str:
        return self.base_url

    @property
    def tenant_id(self) -> str:
        return self.seed.tenant.id

    @property
    def tenant_domain(self) -> str:
        return self.seed.tenant.initial_domain

    def authorization(
        self, face: Face, *, roles: tuple[str, ...] | None = None, wids: tuple[str, ...] | None = None
    ) -> dict[str, str]:
        """Headers this sandbox accepts for `face` (for curl, tests and benchmarks): a token, and Exchange's anchor.

        Without `roles`/`wids` the token holds every right the sandbox checks (for testing a route's shape);
        give them to test what a caller with exactly those rights gets."""
        audience = min(a for a in AUDIENCES[face] if a.startswith("https://"))
        claims = full_rights_claims(self.tenant_id, audience, roles=roles, wids=wids)
        headers = {"Authorization": f"Bearer {encode_token(claims)}"}
        if face == "exchange":
            headers["X-AnchorMailbox"] = f"APP:{ANCHOR_MAILBOX}@{self.tenant_id}"
        return headers

    def set_knobs(self, **changes: Any) -> Knobs:
        """Change some knobs while running (the admin endpoint does the same over HTTP)."""
        knobs = Knobs.model_validate({**self.gate.knobs.model_dump(), **changes})
        apply_knobs(self.directory, self.gate, knobs)
        return knobs

    def inject(
        self,
        face: Face,
        status: int,
        *,
        count: int = 1,
        operation: str | None = None,
        retry_after: int | None = None,
        **shape: Any,
    ) -> None:
        """The next `count` requests to `face` (or to one cmdlet / Graph route on it) answer `status`.

        `shape`: the Exchange answer's form (ScriptedFault: exception_type, type_in, body, warnings).
        """
        fault = {"face": face, "status": status, "count": count, "operation": operation, "retry_after": retry_after}
        self.gate.script(ScriptedFault.model_validate(fault | shape))

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="tenant-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the tenant sandbox did not start")
            time.sleep(0.01)

    def serve_forever(self) -> None:
        self._server.run(sockets=[self._socket])

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()
        self.directory.store.close()

    def __enter__(self) -> TenantSandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
