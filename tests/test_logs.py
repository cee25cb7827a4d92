"""No full email address reaches a log line; every line names its request."""

from __future__ import annotations

import logging

import pytest

from shared.logs import install_safe_log_records, mask_emails, request_context


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("to adele.vance@contoso.com now", "to a***@contoso.com now"),
        ("SMTP:o'neil+x@sub.fabrikam.example;", "SMTP:o***@sub.fabrikam.example;"),
        ("no address here", "no address here"),
    ],
)
def test_mask_emails(text: str, masked: str) -> None:
    assert mask_emails(text) == masked


def test_log_records_are_masked_and_carry_request_ids(caplog: pytest.LogCaptureFixture) -> None:
    install_safe_log_records()
    logger = logging.getLogger("tests.logs")
    with caplog.at_level(logging.INFO, logger="tests.logs"), request_context("req-9", "corr-9"):
        logger.info("contact for %s created", "jordan.reyes@fabrikam.example")
        try:
            raise ValueError("proxy address SMTP:jordan.reyes@fabrikam.example is in use")
        except ValueError:
            logger.exception("failed")
    text = caplog.text
    assert "jordan.reyes@" not in text
    assert "j***@fabrikam.example" in text
    assert {(r.request_id, r.correlation_id) for r in caplog.records} == {("req-9", "corr-9")}  # type: ignore[attr-defined]
