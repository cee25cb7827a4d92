"""Logging that is safe to ship: request and correlation ids on every line, no person's address, no secret.

Installed as a log-record factory, so it covers every logger (ours and the SDKs') under any
handler the Functions host or the local host attaches; on Azure, what reaches a handler at INFO
goes to Application Insights. docs/logging.md states the rule.

An address is masked (`jane.doe@fabrikam.example` -> `j***@fabrikam.example`) in every spelling a
log line meets it in: as typed, percent-encoded in a URL (`jane%40fabrikam.example`, also twice,
`%2540`), JSON-escaped (`jane\\u0040fabrikam.example`, non-ASCII letters as `\\u00fc`), as Python
bytes (`\\xc3\\xbc`), and internationalised (a Unicode local part or domain, or punycode). Only the
addresses of the tenant's own group that the request in hand names are shown (`request_context`),
never the person's, so a printed fix such as `Set-DistributionGroup -Identity 'partners@…'` still
reads whole.

Imports stay in the standard library: function_app.py installs this at every cold start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

_request_id: ContextVar[str] = ContextVar("request_id", default="-")
_correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")
_shown: ContextVar[frozenset[str]] = ContextVar("shown_addresses", default=frozenset())
_installed = False

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [request=%(request_id)s correlation=%(correlation_id)s] %(message)s"

# Libraries whose INFO lines are about their own plumbing: httpx and httpcore log every request URL
# (Graph's hold the person's address in $filter), the Azure SDKs and AMQP stacks every connection
# event. The app and the command line keep them to warnings (`quiet_third_party_loggers`).
THIRD_PARTY_LOGGERS = (
    "azure",  # azure.core's HTTP logging policy, azure.identity, azure.servicebus and its pyamqp, azure.monitor
    "uamqp",
    "httpx",
    "httpcore",
    "msgraph",
    "msgraph_core",
    "kiota_abstractions",
    "kiota_authentication_azure",
    "kiota_http",
    "kiota_serialization_json",
    "msal",
    "urllib3",
)

# --- addresses ------------------------------------------------------------------------------------

# The @ as typed, percent-encoded once or more (%40, %2540, ...) or JSON-escaped (\u0040, \\u0040).
_AT = re.compile(r"@|%(?:25)*40|\\+u0040", re.IGNORECASE)
# A domain: labels of letters (any script), digits and hyphens, or of escaped non-ASCII bytes and
# characters (%C3%BC, %25C3%25BC, \u00fc, \xc3\xbc), separated by dots in the same spellings; at least
# two labels. Escaped ASCII (a closing %27) is not part of a domain.
_LABEL = r"(?:[^\W_]|-|%(?:25)*[89A-F][0-9A-F]|\\+u(?!00[0-7])[0-9A-F]{4}|\\x[89A-F][0-9A-F])+"
_DOT = r"(?:\.|%(?:25)*2E|\\+u002E)"
_DOMAIN = re.compile(rf"{_LABEL}(?:{_DOT}{_LABEL})+", re.IGNORECASE)
# What a local part is made of, escapes included: letters, digits, RFC 5322's atext punctuation
# except / = ? (which delimit URLs; a local part holding one is masked from after its last), and the
# backslash of an escape. Read backwards from the @, at most this many characters.
_LOCAL_CHARACTERS = frozenset(".!#$%&'*+-^_`{|}~\\")
_LOCAL_MAX_CHARACTERS = 1024  # 64 octets, each up to "%2525XX" or "\\u00XX" long, with room
# Where a local part cannot continue: an encoded space, double quote or colon (`mail eq 'jane…` in a
# filter, a JSON string, `smtp:jane…`).
_BEFORE_LOCAL = re.compile(r"%(?:25)*(?:2[02]|3A)|\\+u00(?:2[02]|3A)", re.IGNORECASE)
# Quotes around an address (`'jane@…'`, `%27jane%40…`) are kept outside the masked part.
_LEADING_QUOTES = re.compile(r"(?:'|%(?:25)*27|\\+u0027)+", re.IGNORECASE)
_ESCAPED_CHARACTER = re.compile(r"\\+u([0-9A-F]{4})", re.IGNORECASE)
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9A-F]{2})+", re.IGNORECASE)


def _is_local_character(character: str) -> bool:
    return character.isalnum() or character in _LOCAL_CHARACTERS


def _local_start(text: str, at: int) -> int:
    """Where the local part ending at `at` starts: back over local characters, then past anything
    that cannot be in a local part and past opening quotes."""
    start = at
    while start > 0 and at - start < _LOCAL_MAX_CHARACTERS and _is_local_character(text[start - 1]):
        start -= 1
    for stop in _BEFORE_LOCAL.finditer(text, start, at):
        start = stop.end()
    quotes = _LEADING_QUOTES.match(text, start, at)
    return quotes.end() if quotes else start


def decoded(text: str) -> str:
    """`text` with the escapes masking recognises undone: percent (up to three times), JSON, bytes."""
    for _ in range(3):
        unescaped = unquote(text)
        if unescaped == text:
            break
        text = unescaped
    text = _ESCAPED_CHARACTER.sub(lambda m: chr(int(m.group(1), 16)), text)
    return _ESCAPED_BYTES.sub(lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode(errors="replace"), text)


def _normal(address: str) -> str:
    from shared.addresses import normal_address  # idna: only when an address is compared, not at cold start

    return normal_address(decoded(address))


def mask_emails(text: str, shown: Iterable[str] | None = None) -> str:
    """Every address in `text`, in any spelling above, masked to its first character and its domain,
    except those in `shown` (by default the group addresses the request in hand names)."""
    keep = _shown.get() if shown is None else frozenset(_normal(address) for address in shown)
    pieces: list[str] = []
    done = 0
    for at in _AT.finditer(text):
        if at.start() < done:
            continue  # inside an address already masked
        domain = _DOMAIN.match(text, at.end())
        start = _local_start(text, at.start())
        if domain is None or start == at.start():
            continue
        if keep and _normal(text[start : domain.end()]) in keep:
            continue
        first = text[start] if text[start].isalnum() else ""  # an escape's first character says nothing
        pieces += [text[done:start], first, "***", text[at.start() : domain.end()]]
        done = domain.end()
    return "".join(pieces) + text[done:] if pieces else text


# --- secrets --------------------------------------------------------------------------------------

_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A bearer token, and a JWT anywhere (Entra's tokens, the sandbox's unsigned ones).
    (re.compile(r"\b(Bearer\s+)[^\s,;\"']+", re.IGNORECASE), r"\1***"),
    (re.compile(r"\beyJ[\w-]*\.[\w-]*\.[\w-]*"), "***"),
    # Keys: a Service Bus or storage connection string's, a SAS token's signature.
    (re.compile(r"\b(SharedAccessKey|AccountKey|sig)=[^;&\s\"']+", re.IGNORECASE), r"\1=***"),
)


def mask_secrets(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def masked(text: str) -> str:
    """What a log line may say: no person's address, no token, no key."""
    return mask_secrets(mask_emails(text))


# --- records --------------------------------------------------------------------------------------


@contextmanager
def request_context(request_id: str, correlation_id: str, shown: Iterable[str] = ()) -> Iterator[None]:
    """Name the request on every record logged inside; `shown` are the tenant's group addresses the
    request names, which masking leaves whole (never the person's own: the caller leaves it out)."""
    request_token = _request_id.set(request_id)
    correlation_token = _correlation_id.set(correlation_id)
    shown_token = _shown.set(frozenset(_normal(address) for address in shown))
    try:
        yield
    finally:
        _shown.reset(shown_token)
        _correlation_id.reset(correlation_token)
        _request_id.reset(request_token)


def quiet_third_party_loggers(level: int = logging.WARNING) -> None:
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def install_safe_log_records() -> None:
    global _installed
    if _installed:
        return
    base_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base_factory(*args, **kwargs)
        record.msg = masked(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = masked(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        # Upstream chooses request and correlation ids: one may be an address.
        record.request_id = masked(_request_id.get())
        record.correlation_id = masked(_correlation_id.get())
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
