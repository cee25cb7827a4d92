"""No person's address and no secret reaches a log line, in any spelling; every line names its request;
the tenant's group addresses the request names stay readable."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote, quote_plus

import pytest

from shared.logs import (
    THIRD_PARTY_LOGGERS,
    install_safe_log_records,
    mask_emails,
    mask_secrets,
    quiet_third_party_loggers,
    request_context,
)


def spellings(address: str) -> dict[str, str]:
    """`address` as log lines meet it: typed, in URLs, in JSON, as bytes, with its domain either way."""
    local, domain = address.rsplit("@", 1)
    ascii_domain = domain.encode("idna").decode() if not domain.isascii() else domain
    forms = {
        "typed": address,
        "upper": address.upper(),
        "punycode": f"{local}@{ascii_domain}",
        "percent": quote(address, safe=""),
        "percent twice": quote(quote(address, safe=""), safe=""),
        "form": quote_plus(address),
        "odata in a url": quote(f"mail eq '{address.replace(chr(39), chr(39) * 2)}'", safe=""),
        "json": json.dumps(address),
        "json ascii": json.dumps(address, ensure_ascii=True).replace("@", "\\u0040"),
        "json twice": json.dumps(json.dumps(address, ensure_ascii=True).replace("@", "\\u0040")),
        "bytes": repr(address.encode()),
    }
    return forms


ADDRESSES = [
    "adele.vance@contoso.com",
    "jane.o'doe@fabrikam.example",
    "o'neil+x@sub.fabrikam.example",
    "jürgen@müller.example",
    "jürgen@xn--mller-kva.example",
    "李@例え.テスト",
    "x@b.example",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_no_spelling_of_an_address_survives_masking(address: str) -> None:
    local = address.rsplit("@", 1)[0]
    for form, text in spellings(address).items():
        line = mask_emails(f"GET /v1.0/users?$filter={text}&$select=id HTTP/1.1 [{text}]")
        assert text not in line, (form, line)
        if len(local) > 1:
            for spelled_local in {local, quote(local, safe=""), json.dumps(local)[1:-1]}:
                assert spelled_local not in line, (form, line)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to adele.vance@contoso.com now", "to a***@contoso.com now"),
        ("SMTP:o'neil+x@sub.fabrikam.example;", "SMTP:o***@sub.fabrikam.example;"),
        ("no address here", "no address here"),
        (
            "$filter=mail%20eq%20%27jane.o%27%27doe%40fabrikam.example%27",
            "$filter=mail%20eq%20%27j***%40fabrikam.example%27",
        ),
        ("-Links 'jane@fabrikam.example'", "-Links 'j***@fabrikam.example'"),
        (
            '{"external_email": "j\\u00fcrgen\\u0040m\\u00fcller.example"}',
            '{"external_email": "j***\\u0040m\\u00fcller.example"}',
        ),
        ("j***@fabrikam.example", "j***@fabrikam.example"),  # masking twice changes nothing
    ],
)
def test_mask_emails(text: str, masked: str) -> None:
    assert mask_emails(text) == masked


def test_the_groups_addresses_are_shown_and_the_persons_never() -> None:
    group, person = "partners@contoso.com", "jane@fabrikam.example"
    line = (
        f"No group <{group}>; Add-UnifiedGroupLinks -Identity '{group}' -Links '{person}'; "
        f"GET /groups?$filter={quote(f'mail eq {chr(39)}{group}{chr(39)}', safe='')}"
    )
    shown = mask_emails(line, shown=[group.upper()])
    assert f"<{group}>" in shown and f"-Identity '{group}'" in shown and quote(group, safe="") in shown
    assert person not in shown and "-Links 'j***@fabrikam.example'" in shown
    assert group not in mask_emails(line, shown=[]), "shown only when named"


def test_a_local_part_is_read_back_a_bounded_way_so_a_long_line_costs_linear_time() -> None:
    """Each @ looks back at most 1,024 characters: a 200,000-letter run is read once, not once per letter."""
    masked = mask_emails("x" * 5000 + "jane@fabrikam.example")
    assert masked == "x" * (5004 - 1024) + "x***@fabrikam.example"
    assert mask_emails("n" * 200_000) == "n" * 200_000


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2ln", "eyJ0eXAiOiJKV1QifQ"),
        ("token eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0. in a message", "eyJhbGciOiJub25lIn0"),
        ("Endpoint=sb://x/;SharedAccessKeyName=root;SharedAccessKey=c2VjcmV0a2V5PQ==", "c2VjcmV0a2V5PQ=="),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFy;", "Zm9vYmFy"),
        ("SharedAccessSignature sr=sb%3a%2f%2fx&sig=abc%2Bdef%3D&se=1&skn=root", "abc%2Bdef%3D"),
    ],
)
def test_tokens_and_keys_are_masked(text: str, secret: str) -> None:
    assert secret not in mask_secrets(text)


def test_log_records_are_masked_and_carry_request_ids(caplog: pytest.LogCaptureFixture) -> None:
    install_safe_log_records()
    logger = logging.getLogger("tests.logs")
    with (
        caplog.at_level(logging.INFO, logger="tests.logs"),
        request_context("req-9", "jordan.reyes@fabrikam.example", shown=["partners@contoso.com"]),
    ):
        logger.info("contact for %s created in %s", "jordan.reyes@fabrikam.example", "partners@contoso.com")
        try:
            raise ValueError("proxy address SMTP:jordan.reyes@fabrikam.example is in use; Bearer abc.def")
        except ValueError:
            logger.exception("failed")
    text = caplog.text
    assert "jordan.reyes@" not in text and "abc.def" not in text
    assert "j***@fabrikam.example" in text and "partners@contoso.com" in text
    # The correlation id is upstream's choice, and may be an address too.
    assert {(r.request_id, r.correlation_id) for r in caplog.records} == {("req-9", "j***@fabrikam.example")}  # type: ignore[attr-defined]


def test_the_third_party_loggers_keep_to_warnings() -> None:
    quiet_third_party_loggers()
    assert {logging.getLogger(name).getEffectiveLevel() for name in THIRD_PARTY_LOGGERS} == {logging.WARNING}
    assert logging.getLogger("azure.servicebus._pyamqp").getEffectiveLevel() >= logging.WARNING
