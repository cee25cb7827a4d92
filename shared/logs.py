"""Logging that is safe to ship: request and correlation ids on every line, no full email address.

Installed as a log-record factory, so it covers every logger (ours and the SDKs') under any
handler the Functions host or the local host attaches.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_request_id: ContextVar[str] = ContextVar("request_id", default="-")
_correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")
_EMAIL = re.compile(r"([A-Za-z0-9._%+'-])[A-Za-z0-9._%+'-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_installed = False

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [request=%(request_id)s correlation=%(correlation_id)s] %(message)s"


def mask_emails(text: str) -> str:
    """adele.vance@contoso.com -> a***@contoso.com: enough to tell tenants apart, not to identify."""
    return _EMAIL.sub(r"\1***@\2", text)


@contextmanager
def request_context(request_id: str, correlation_id: str) -> Iterator[None]:
    request_token = _request_id.set(request_id)
    correlation_token = _correlation_id.set(correlation_id)
    try:
        yield
    finally:
        _request_id.reset(request_token)
        _correlation_id.reset(correlation_token)


def install_safe_log_records() -> None:
    global _installed
    if _installed:
        return
    base_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base_factory(*args, **kwargs)
        record.msg = mask_emails(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask_emails(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.request_id = _request_id.get()
        record.correlation_id = _correlation_id.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
