"""ExchangeOnlineClient against the sandbox where Exchange is not Entra (issue 24, item 5): its own Guids, a
contact Entra does not have yet, slow cmdlets Exchange ends itself, its Rate-Limit headers, its dates.

The Microsoft behaviours and their sources: docs/microsoft-365-facts.md, section 8.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from shared.directory.errors import TransientDirectoryError
from shared.directory.exchange import TIMEOUT, ExchangeOnlineClient, exchange_date, retry_after_of
from standins.tenant_sandbox import Knobs, TenantSandbox


async def test_a_contact_entra_does_not_have_yet_has_no_entra_id(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    """An empty ExternalDirectoryObjectId is "not known yet", never an id to send to Graph."""
    tenant_sandbox.set_knobs(replication_lag_seconds=3600)
    contact = await exchange_directory.new_mail_contact(
        name="Early", external_email_address="early@fabrikam.example", display_name="Early"
    )
    assert contact.external_directory_object_id is None
    found = await exchange_directory.find_mail_contact("early@fabrikam.example")  # it takes the address
    assert found is not None and found.external_directory_object_id is None


async def test_a_member_is_matched_by_its_entra_id_not_its_exchange_guid(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(exchange_lag_seconds=0)
    guest = tenant_sandbox.directory.user_by_mail("existing.guest@fabrikam.example")
    assert guest is not None
    (listed,) = await exchange_directory.list_unified_group_subscribers("project-falcon@contoso.com")
    assert listed.external_directory_object_id == guest.id and listed.identity != guest.id


def test_the_client_waits_for_exchanges_own_answer() -> None:
    """Exchange ends a slow cmdlet itself; the client waits longer than that, so it gets that answer."""
    assert TIMEOUT.read is not None and TIMEOUT.read > Knobs().exchange_cmdlet_timeout_seconds


async def test_a_cmdlet_exchange_ended_is_retried_later_and_may_have_acted(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(latency_ms=600, exchange_cmdlet_timeout_seconds=0.4)
    with pytest.raises(TransientDirectoryError) as ended:
        await exchange_directory.new_mail_contact(
            name="Slow", external_email_address="slow@fabrikam.example", display_name="Slow"
        )
    assert ended.value.status == 504  # Exchange's answer, not the client giving up
    tenant_sandbox.set_knobs(latency_ms=0)
    assert await exchange_directory.find_mail_contact("slow@fabrikam.example") is not None  # it had acted


async def test_a_spent_budget_holds_the_process_until_exchange_resets_it(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(throttle={"exchange": {"requests_per_second": 2, "burst": 2}})
    tenant_sandbox.request_log.clear()
    for _ in range(3):
        await exchange_directory.get_accepted_domains()
    # The second answer said Rate-Limit-Remaining: 0; the third request waited for Rate-Limit-Reset.
    assert [entry.status for entry in tenant_sandbox.request_log] == [200, 200, 200]


@pytest.mark.parametrize(
    "reset",
    [
        lambda: "30",
        lambda: (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        lambda: (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT"),
    ],
)
def test_a_429_without_retry_after_waits_until_rate_limit_reset(reset: Callable[[], str]) -> None:
    response = httpx.Response(429, headers={"Rate-Limit-Remaining": "0", "Rate-Limit-Reset": reset()})
    waited = retry_after_of(response)
    assert waited is not None and 25 <= waited <= 30
    assert retry_after_of(httpx.Response(429, headers={"Retry-After": "7", "Rate-Limit-Reset": "30"})) == 7


def test_dates_go_to_exchange_as_the_mature_callers_send_them() -> None:
    moment = datetime(2026, 3, 1, 10, 30, 15, 250_000, tzinfo=UTC)
    assert exchange_date(moment) == "2026-03-01T10:30:15"
    assert exchange_date(moment, round_up=True) == "2026-03-01T10:30:16"
    assert exchange_date(moment.replace(microsecond=0), round_up=True) == "2026-03-01T10:30:15"
    assert exchange_date(moment.astimezone(timezone(timedelta(hours=2)))) == "2026-03-01T10:30:15"
