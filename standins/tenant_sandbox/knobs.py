"""Realism knobs: how unkind the sandbox is. Set at start (JSON file or arguments) or live over /_sandbox.

Latency, throttling, faults and Entra's replication lag default to "off", so tests opt into them
explicitly. Two Microsoft traits that every caller meets are on by default: Exchange learns what
Graph changed only after `exchange_lag_seconds`, and ends a cmdlet that runs longer than
`exchange_cmdlet_timeout_seconds` on its side. The shapes are validated with pydantic, so a bad
knob file or admin request gets a specific 422.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Face = Literal["graph", "exchange"]
FACES: tuple[Face, ...] = ("graph", "exchange")


class _Knob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Throttle(_Knob):
    """A token bucket: `burst` requests at once, refilled at `requests_per_second`."""

    requests_per_second: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


class ConcurrencyLimit(_Knob):
    """Exchange Online's limit on requests in flight for a tenant, every app's together: a request past
    it is answered at once with the plain-text "You have reached the maximum number of concurrent
    requests per tenant. Please wait and try again." (docs/microsoft-365-facts.md, section 3)."""

    requests: int = Field(ge=1, description="requests one tenant may have in flight at once")
    status: Literal[429, 503] = Field(default=429, description="the answer's status; Exchange's is unconfirmed")


class ErrorRate(_Knob):
    """A fraction of requests that fail with `status` (Microsoft's 5xx bodies), chosen at random."""

    rate: float = Field(ge=0, le=1)
    status: Literal[500, 502, 503, 504] = 503


class Knobs(_Knob):
    latency_ms: float = Field(default=0, ge=0, description="fixed delay added to every request")
    jitter_ms: float = Field(default=0, ge=0, description="plus a uniform random delay up to this")
    replication_lag_seconds: float = Field(
        default=0, ge=0, description="a new contact or guest is invisible to Graph and to Add-DistributionGroupMember"
    )
    exchange_lag_seconds: float = Field(
        default=1.0,
        ge=0,
        description="a guest invited or a member added through Graph reaches Exchange (Get-Recipient, "
        "Get-UnifiedGroupLinks) this much later",
    )
    exchange_cmdlet_timeout_seconds: float = Field(
        default=90.0,
        gt=0,
        description="Exchange ends a cmdlet that takes longer (latency included) on its side: 504, the change made",
    )
    throttle: dict[Face, Throttle] = Field(
        default_factory=dict, description="token bucket per face and app (the Tenant_Application scope); absent = none"
    )
    exchange_concurrency: ConcurrencyLimit | None = Field(
        default=None, description="Exchange requests in flight per tenant, all apps together; None = no limit"
    )
    error_rate: dict[Face, ErrorRate] = Field(default_factory=dict)
    bounce_domains: tuple[str, ...] = Field(default=(), description="mail to these domains fails (trace: Failed)")
    trace_lag_seconds: float = Field(default=0, ge=0, description="a sent message shows in Get-MessageTraceV2 after")
    message_trace_quota: int = Field(
        default=100, ge=1, description="Get-MessageTraceV2 queries the tenant accepts in a running 5-minute window"
    )
    refuse_or_with_lambda: bool = Field(
        default=False,
        description="Graph answers `or` between a lambda (proxyAddresses/any) and another clause with its 400 "
        "Request_UnsupportedQuery: the refusal docs/stand-in-differences.md leaves unconfirmed",
    )
    random_seed: int | None = Field(default=None, description="fix the jitter and error-rate dice")

    @classmethod
    def load(cls, path: Path) -> Knobs:
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError as error:
            raise ValueError(f"knobs file {path} does not exist") from error

    def bounces(self, address: str) -> bool:
        domain = address.rsplit("@", 1)[-1].lower()
        return domain in {d.lower() for d in self.bounce_domains}


class ScriptedFault(_Knob):
    """The next `count` requests to `face` (for one operation, or any) answer `status`.

    400 and 403 answer with the face's generic refusal (a rejected change, a missing role), for
    exercising how callers treat permanent failures. The Exchange face can also answer in each
    shape Exchange uses (docs/microsoft-365-facts.md, "Exchange error answers"): the exception
    type in a chosen place, a body that is not JSON, the per-tenant concurrency text, or (status
    200) a success that carries `@adminapi.warnings`, the cmdlet having run.
    """

    face: Face
    operation: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="a cmdlet (New-MailContact) or Graph route (POST /v1.0/invitations); None = any"
    )
    status: Literal[200, 400, 403, 429, 500, 502, 503, 504]
    count: int = Field(default=1, ge=1, le=10_000)
    retry_after: int | None = Field(default=None, ge=0, description="seconds; 429 answers always carry one")
    exception_type: str | None = Field(default=None, description="Exchange: the .NET exception type to name")
    type_in: Literal["everywhere", "header", "details", "internal_exception"] = Field(
        default="everywhere", description="Exchange: where the exception type is carried"
    )
    body: Literal["json", "undecodable", "concurrency_limit"] = Field(
        default="json", description="Exchange: a JSON error, NUL bytes, or the plain-text concurrency-limit answer"
    )
    warnings: tuple[str, ...] = Field(default=(), description="Exchange, status 200: the answer's @adminapi.warnings")

    @model_validator(mode="after")
    def _fits(self) -> ScriptedFault:
        if self.status == 200 and (self.face != "exchange" or not self.warnings):
            raise ValueError("status 200 is for Exchange answers carrying warnings")
        return self


@dataclass
class _Bucket:
    rate: float
    capacity: int
    tokens: float
    updated: float

    def take(self, now: float) -> float | None:
        """None when a token was taken; otherwise the seconds until one is free."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate

    def used_percentage(self) -> float:
        return 100.0 * (1 - self.tokens / self.capacity)

    def state(self) -> RateLimit:
        """What the bucket holds now, as Exchange's Rate-Limit-* headers tell it."""
        return RateLimit(self.capacity, max(math.floor(self.tokens), 0), (self.capacity - self.tokens) / self.rate)


@dataclass(frozen=True)
class RateLimit:
    """Exchange's Rate-Limit-Limit, Rate-Limit-Remaining, and the seconds until Rate-Limit-Reset (full again)."""

    limit: int
    remaining: int
    reset_in_seconds: float


@dataclass(frozen=True)
class Verdict:
    """What the gate decided for one request before the face sees it."""

    delay_seconds: float
    status: int | None = None  # None: let the face answer
    retry_after: int | None = None
    throttle_percentage: float | None = None  # Graph's x-ms-throttle-limit-percentage, when a bucket is set
    fault: ScriptedFault | None = None  # the scripted fault that decided, for its answer's shape
    rate_limit: RateLimit | None = None  # the face's bucket after this request, when a bucket is set
    too_many_in_flight: bool = False  # the tenant's concurrency limit refused it (Exchange's plain-text answer)


class Gate:
    """Applies the knobs to each request: latency, token buckets, error rates and scripted faults."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        self._lock = threading.Lock()
        self._script: list[ScriptedFault] = []
        self._exchange_in_flight = 0  # kept across knob changes: those requests are still running
        self.knobs = knobs or Knobs()

    @property
    def knobs(self) -> Knobs:
        return self._knobs

    @knobs.setter
    def knobs(self, knobs: Knobs) -> None:
        with self._lock:
            self._knobs = knobs
            self._random = random.Random(knobs.random_seed)  # noqa: S311 - fault dice, not security
            self._buckets: dict[tuple[Face, str], _Bucket] = {}  # per face and app, filled as apps call

    def script(self, fault: ScriptedFault) -> None:
        with self._lock:
            self._script.append(fault)

    def pending_script(self) -> list[ScriptedFault]:
        with self._lock:
            return list(self._script)

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    def admit(self, face: Face) -> bool:
        """Count a request in flight against the tenant's Exchange concurrency limit; False when it is
        past the limit (not counted). Every request admitted must `leave` once answered."""
        if face != "exchange":
            return True
        with self._lock:
            limit = self._knobs.exchange_concurrency
            if limit is not None and self._exchange_in_flight >= limit.requests:
                return False
            self._exchange_in_flight += 1
            return True

    def leave(self, face: Face) -> None:
        if face == "exchange":
            with self._lock:
                self._exchange_in_flight -= 1

    def too_many_in_flight(self) -> Verdict:
        """The answer to a request `admit` refused: at once after the network's latency, no Retry-After."""
        with self._lock:
            knobs = self._knobs
            delay = knobs.latency_ms / 1000 + self._random.uniform(0, knobs.jitter_ms / 1000)
            limit = knobs.exchange_concurrency
            return Verdict(delay, limit.status if limit else 429, too_many_in_flight=True)

    def decide(self, face: Face, operation: str, app: str = "") -> Verdict:
        """`app`: the caller's application id; Graph's buckets are per app and tenant."""
        with self._lock:
            knobs = self._knobs
            delay = knobs.latency_ms / 1000 + self._random.uniform(0, knobs.jitter_ms / 1000)
            if (scripted := self._take_scripted(face, operation)) is not None:
                retry_after = scripted.retry_after
                if scripted.status == 429 and retry_after is None:
                    retry_after = 1
                return Verdict(delay, scripted.status, retry_after, fault=scripted)
            percentage, limit = None, None
            if (bucket := self._bucket(face, app)) is not None:
                wait = bucket.take(time.monotonic())
                percentage, limit = bucket.used_percentage(), bucket.state()
                if wait is not None:
                    return Verdict(delay, 429, max(1, math.ceil(wait)), 100.0, rate_limit=limit)
            rate = knobs.error_rate.get(face)
            if rate is not None and self._random.random() < rate.rate:
                return Verdict(delay, rate.status, None, percentage, rate_limit=limit)
            return Verdict(delay, None, None, percentage, rate_limit=limit)

    def _bucket(self, face: Face, app: str) -> _Bucket | None:
        if (throttle := self._knobs.throttle.get(face)) is None:
            return None
        if (bucket := self._buckets.get((face, app))) is None:
            bucket = _Bucket(throttle.requests_per_second, throttle.burst, float(throttle.burst), time.monotonic())
            self._buckets[face, app] = bucket
        return bucket

    def _take_scripted(self, face: Face, operation: str) -> ScriptedFault | None:
        for index, fault in enumerate(self._script):
            if fault.face == face and fault.operation in (None, operation):
                if fault.count == 1:
                    del self._script[index]
                else:
                    self._script[index] = fault.model_copy(update={"count": fault.count - 1})
                return fault
        return None
