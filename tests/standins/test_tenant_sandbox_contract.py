"""The sandbox's contract, driven through the real msgraph-sdk and the project's Exchange client.

Each test names the Microsoft behaviour it holds the sandbox to (reference: microsoft-365.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from azure.core.credentials import AccessToken
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.contacts.contacts_request_builder import ContactsRequestBuilder
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.groups.item.group_item_request_builder import GroupItemRequestBuilder
from msgraph.generated.models.org_contact import OrgContact
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem

from shared.directory.errors import (
    AlreadyExistsError,
    NotFoundError,
    PermissionDeniedError,
    RejectedRequestError,
    ThrottledError,
    TransientDirectoryError,
)
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from standins.tenant_sandbox import Knobs, TenantSandbox, TenantSeed
from standins.tenant_sandbox.credential import FullRightsCredential
from standins.tenant_sandbox.exchange_face import CONCURRENCY_LIMIT_ANSWER

pytestmark = pytest.mark.stack  # every test here starts stand-ins

PARTNERS = "7c1d2e3f-0001-4b5c-8d9e-0f1a2b3c4d01"
ADELE = "0b6a9c1e-1111-4a4e-9b1a-5f7c2d3e4a01"
WELCOME = "welcome@contoso.com"
GUEST = "existing.guest@fabrikam.example"


def _exchange(sandbox: TenantSandbox) -> ExchangeOnlineClient:
    return ExchangeOnlineClient(
        FullRightsCredential(sandbox.tenant_id),
        tenant_id=sandbox.tenant_id,
        base_url=sandbox.exchange_base_url,
    )


async def _contact_in_partners(exchange: ExchangeOnlineClient, address: str = "ann@fabrikam.example") -> str:
    contact = await exchange.new_mail_contact(name="Ann", external_email_address=address, display_name="Ann")
    await exchange.add_distribution_group_member("Partners", contact.identity)
    assert contact.external_directory_object_id
    return contact.external_directory_object_id


# 1. One directory, kept in SQLite


async def test_state_survives_a_restart_on_the_same_database(tmp_path: Path) -> None:
    database = tmp_path / "tenant.db"
    with TenantSandbox(TenantSeed.demo(), database=database) as first:
        exchange = _exchange(first)
        contact_id = await _contact_in_partners(exchange)
        await exchange.set_require_sender_authentication("Partners", False, unified=False)
        await exchange.close()
    with TenantSandbox(TenantSeed.demo(), database=database) as second:
        exchange = _exchange(second)
        try:
            members = await exchange.list_distribution_group_members("Partners")
            restrictions = await exchange.get_sender_restrictions("Partners", unified=False)
        finally:
            await exchange.close()
    assert [m.external_directory_object_id for m in members] == [contact_id]
    assert restrictions.require_sender_authentication is False


def test_a_database_of_another_tenant_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "tenant.db"
    TenantSandbox(TenantSeed.demo(), database=database).stop()
    other = TenantSeed.demo().model_copy(
        update={"tenant": TenantSeed.demo().tenant.model_copy(update={"id": "00000000-0000-0000-0000-000000000001"})}
    )
    with pytest.raises(ValueError, match="holds tenant"):
        TenantSandbox(other, database=database)


def test_each_in_memory_sandbox_is_a_fresh_tenant(tenant_sandbox: TenantSandbox) -> None:
    tenant_sandbox.directory.add_guest("x@fabrikam.example", "X")
    with TenantSandbox(TenantSeed.demo()) as fresh:
        assert fresh.directory.user_by_mail("x@fabrikam.example") is None


# 2. Graph v1.0 through msgraph-sdk


async def test_group_select_returns_only_the_selected_properties(graph_directory: MsGraphDirectory) -> None:
    query = GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(select=["displayName"])
    group = await graph_directory.sdk.groups.by_group_id(PARTNERS).get(RequestConfiguration(query_parameters=query))
    assert group is not None and group.display_name == "Partners" and group.mail is None


async def test_users_come_with_graphs_default_properties_unless_select_asks_for_more(
    graph_directory: MsGraphDirectory,
) -> None:
    """List users / user resource: userType, otherMails and proxyAddresses are "Returned only on $select"."""
    plain = await graph_directory.sdk.users.by_user_id(GUEST).get()
    assert plain is not None and plain.display_name == "Existing Guest" and plain.mail == GUEST
    assert plain.user_type is None and plain.other_mails is None and plain.proxy_addresses is None
    assert plain.user_principal_name == "existing.guest_fabrikam.example#EXT#@contoso.onmicrosoft.com"
    listed = await graph_directory.sdk.users.get()
    assert listed is not None and listed.value and all(u.user_type is None for u in listed.value)
    query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
        select=["id", "userType", "otherMails", "proxyAddresses"]
    )
    chosen = await graph_directory.sdk.users.by_user_id(GUEST).get(RequestConfiguration(query_parameters=query))
    assert chosen is not None and chosen.display_name is None and chosen.mail is None
    assert (chosen.user_type, chosen.other_mails, chosen.proxy_addresses) == ("Guest", [GUEST], ["SMTP:" + GUEST])


async def test_users_are_listed_without_a_filter_and_paged_with_top(graph_directory: MsGraphDirectory) -> None:
    users = graph_directory.sdk.users
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=2, select=["id"])
    first = await users.get(RequestConfiguration(query_parameters=query))
    assert first is not None and len(first.value or []) == 2 and first.odata_next_link
    assert "%24top=2" in first.odata_next_link or "$top=2" in first.odata_next_link
    second = await users.with_url(first.odata_next_link).get()
    assert second is not None and len(second.value or []) == 1 and second.odata_next_link is None
    seen = {u.id for u in (first.value or []) + (second.value or [])}
    assert ADELE in seen and len(seen) == 3


@pytest.mark.parametrize("top", [0, 1000])
async def test_top_outside_1_to_999_is_refused(graph_directory: MsGraphDirectory, top: int) -> None:
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(top=top)
    with pytest.raises(APIError) as refused:
        await graph_directory.sdk.users.get(RequestConfiguration(query_parameters=query))
    assert refused.value.response_status_code == 400
    assert f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive." in str(refused.value)


async def _groups_where(graph: MsGraphDirectory, condition: str) -> list[str]:
    query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(filter=condition, select=["displayName"])
    page = await graph.sdk.groups.get(RequestConfiguration(query_parameters=query))
    return [g.display_name or "" for g in (page.value if page and page.value else [])]


async def test_groups_carry_proxy_addresses_and_are_found_by_any_of_them(graph_directory: MsGraphDirectory) -> None:
    """group resource: proxyAddresses are returned by default; `mail` is only the primary address."""
    partners = await graph_directory.sdk.groups.by_group_id(PARTNERS).get()
    assert partners is not None
    assert partners.proxy_addresses == ["SMTP:partners@contoso.com", "smtp:partner-desk@contoso.com"]
    assert await _groups_where(graph_directory, "mail eq 'partner-desk@contoso.com'") == []
    for condition in (
        "proxyAddresses/any(p:p eq 'smtp:partner-desk@contoso.com')",
        "proxyAddresses/any(x: x eq 'SMTP:partners@contoso.com')",
        "mail eq 'nobody@contoso.com' or proxyAddresses/any(p:p eq 'smtp:Partner-Desk@Contoso.com')",
    ):
        assert await _groups_where(graph_directory, condition) == ["Partners"], condition


async def test_advanced_operators_without_consistency_level_are_refused(graph_directory: MsGraphDirectory) -> None:
    """Advanced query capabilities: endsWith on mail needs ConsistencyLevel: eventual and $count=true."""
    with pytest.raises(APIError) as refused:
        await _groups_where(graph_directory, "endsWith(mail,'@contoso.com')")
    assert refused.value.response_status_code == 400
    assert "Operator 'endswith' is not supported because the required parameters might be missing" in str(refused.value)


async def test_org_contacts_list_get_filter_member_of(
    graph_directory: MsGraphDirectory, exchange_directory: ExchangeOnlineClient
) -> None:
    contact_id = await _contact_in_partners(exchange_directory)
    contacts = graph_directory.sdk.contacts
    listed = await contacts.get()
    assert listed is not None and [c.id for c in listed.value or []] == [contact_id]
    query = ContactsRequestBuilder.ContactsRequestBuilderGetQueryParameters(filter="mail eq 'ANN@fabrikam.example'")
    filtered = await contacts.get(RequestConfiguration(query_parameters=query))
    assert filtered is not None and [c.mail for c in filtered.value or []] == ["ann@fabrikam.example"]
    one = await contacts.by_org_contact_id(contact_id).get()
    assert one is not None and one.display_name == "Ann"
    member_of = await contacts.by_org_contact_id(contact_id).member_of.get()
    assert member_of is not None and [g.id for g in member_of.value or []] == [PARTNERS]
    with pytest.raises(APIError) as missing:
        await contacts.by_org_contact_id("00000000-0000-0000-0000-00000000dead").get()
    assert missing.value.response_status_code == 404


async def test_org_contact_writes_are_refused_as_graph_refuses_them(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory, exchange_directory: ExchangeOnlineClient
) -> None:
    contact_id = await _contact_in_partners(exchange_directory)
    contact = graph_directory.sdk.contacts.by_org_contact_id(contact_id)
    with pytest.raises(APIError) as patched:
        await contact.patch(OrgContact(display_name="Renamed"))
    with pytest.raises(APIError) as deleted:
        await contact.delete()
    assert patched.value.response_status_code == deleted.value.response_status_code == 400
    assert "does not allow 'Delete' operations against instances of resource 'OrgContact'" in str(deleted.value)
    # msgraph-sdk v1.0 has no create for contacts at all; the raw POST is refused the same way.
    async with httpx.AsyncClient() as http:
        created = await http.post(
            f"{tenant_sandbox.graph_base_url}/contacts",
            json={"displayName": "Nope"},
            headers=tenant_sandbox.authorization("graph"),
        )
    assert created.status_code == 400 and "'Create'" in created.json()["error"]["message"]
    kept = await exchange_directory.find_mail_contact("ann@fabrikam.example")
    assert kept is not None and kept.external_directory_object_id == contact_id


async def test_get_user_by_id_and_by_mail(graph_directory: MsGraphDirectory) -> None:
    by_id = await graph_directory.sdk.users.by_user_id(ADELE).get()
    by_mail = await graph_directory.sdk.users.by_user_id("adele.vance@contoso.com").get()
    assert by_id is not None and by_mail is not None and by_id.id == by_mail.id == ADELE
    with pytest.raises(APIError) as missing:
        await graph_directory.sdk.users.by_user_id("nobody@contoso.com").get()
    assert missing.value.response_status_code == 404


async def test_reinviting_an_existing_guest_returns_that_guest(graph_directory: MsGraphDirectory) -> None:
    existing = await graph_directory.find_user_by_mail(GUEST)
    invited = await graph_directory.invite_guest(GUEST, "Existing Guest", "https://myapplications.microsoft.com")
    assert existing is not None and invited.id == existing.id


async def test_send_mail_is_accepted_and_refused_for_a_guest_or_unknown_sender(tenant_sandbox: TenantSandbox) -> None:
    # Tenant-wide Mail.Send: what the face answers for each sender, not what a scoped grant allows.
    graph = MsGraphDirectory(FullRightsCredential(tenant_sandbox.tenant_id), base_url=tenant_sandbox.graph_base_url)
    try:
        await graph.send_mail(WELCOME, "ann@fabrikam.example", "Welcome", "Hello")
        assert tenant_sandbox.request_log[-1][1:3] == ("POST /v1.0/users/{id}/sendMail", 202)
        with pytest.raises(NotFoundError):
            await graph.send_mail(GUEST, "ann@fabrikam.example", "Welcome", "Hello")
        with pytest.raises(NotFoundError):
            await graph.send_mail("nobody@contoso.com", "ann@fabrikam.example", "Welcome", "Hello")
        with pytest.raises(RejectedRequestError):
            await graph.send_mail(WELCOME, "not-an-address", "Welcome", "Hello")
    finally:
        await graph.close()


async def test_batch_inner_statuses_are_independent(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    sdk = graph_directory.sdk
    tenant_sandbox.inject("graph", 429, retry_after=7, operation="GET /v1.0/groups/{id}")
    batch = BatchRequestContent(
        {
            "user": BatchRequestItem(sdk.users.by_user_id(ADELE).to_get_request_information(), id="user"),
            "missing": BatchRequestItem(
                sdk.users.by_user_id("nobody@contoso.com").to_get_request_information(), id="missing"
            ),
            "group": BatchRequestItem(sdk.groups.by_group_id(PARTNERS).to_get_request_information(), id="group"),
        }
    )
    answer = await sdk.batch.post(batch)
    statuses = answer.get_response_status_codes()
    assert statuses == {"user": 200, "missing": 404, "group": 429}
    assert answer.responses["group"].headers["retry-after"] == "7"


def test_a_bad_inner_request_gets_its_own_answer_and_the_batch_goes_on(tenant_sandbox: TenantSandbox) -> None:
    requests = [
        {"id": "unknown-route", "method": "GET", "url": "/no-such-segment/x"},
        {"id": "bad-headers", "method": "GET", "url": f"/users/{ADELE}", "headers": ["not", "an", "object"]},
        {"id": "absolute", "method": "GET", "url": f"https://graph.microsoft.com/v1.0/users/{ADELE}"},
        {"id": "fine", "method": "GET", "url": f"/users/{ADELE}"},
    ]
    response = httpx.post(
        f"{tenant_sandbox.graph_base_url}/$batch",
        json={"requests": requests},
        headers=tenant_sandbox.authorization("graph"),
    )
    assert response.status_code == 200
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert {k: a["status"] for k, a in answers.items()} == {
        "unknown-route": 404,
        "bad-headers": 400,
        "absolute": 400,
        "fine": 200,
    }
    assert "no-such-segment" in answers["unknown-route"]["body"]["error"]["message"]
    assert all("request-id" in answers[k]["body"]["error"]["innerError"] for k in ("bad-headers", "absolute"))


def test_batch_of_more_than_20_is_refused(tenant_sandbox: TenantSandbox) -> None:
    requests = [{"id": str(i), "method": "GET", "url": f"/users/{ADELE}"} for i in range(21)]
    response = httpx.post(
        f"{tenant_sandbox.graph_base_url}/$batch",
        json={"requests": requests},
        headers=tenant_sandbox.authorization("graph"),
    )
    assert response.status_code == 400 and "maximum of 20" in response.json()["error"]["message"]


# 3. Exchange InvokeCommand through the project's client


async def test_set_and_remove_mail_contact(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    await _contact_in_partners(exchange_directory)
    contact = await exchange_directory.find_mail_contact("ann@fabrikam.example")
    assert contact is not None
    contact_id = contact.identity  # Exchange's Guid: Exchange does not take the Entra object id as -Identity
    await exchange_directory.invoke("Set-MailContact", {"Identity": "Ann", "DisplayName": 'Ann "$(x)"; B'})
    await exchange_directory.invoke("Set-Contact", {"Identity": contact_id, "LastName": "Lee"})
    row = (await exchange_directory.invoke("Get-MailContact", {"Identity": "ann@fabrikam.example"})).rows[0]
    assert row["DisplayName"] == 'Ann "$(x)"; B' and row["LastName"] == "Lee"
    # FirstName and LastName are Set-Contact's: Set-MailContact has no such parameter (Microsoft's syntax).
    with pytest.raises(RejectedRequestError, match="parameter name 'LastName'"):
        await exchange_directory.invoke("Set-MailContact", {"Identity": contact_id, "LastName": "Lee"})
    await exchange_directory.invoke("Remove-MailContact", {"Identity": contact_id})
    assert await exchange_directory.find_mail_contact("Ann") is None
    assert await exchange_directory.list_distribution_group_members("Partners") == []
    with pytest.raises(NotFoundError):
        await exchange_directory.invoke("Remove-MailContact", {"Identity": contact_id})


async def test_get_recipient_finds_contacts_users_and_groups(exchange_directory: ExchangeOnlineClient) -> None:
    await _contact_in_partners(exchange_directory)
    kinds = {
        identity: (await exchange_directory.invoke("Get-Recipient", {"Identity": identity})).rows[0][
            "RecipientTypeDetails"
        ]
        for identity in ("ann@fabrikam.example", "adele.vance@contoso.com", GUEST, "partners@contoso.com")
    }
    assert kinds == {
        "ann@fabrikam.example": "MailContact",
        "adele.vance@contoso.com": "UserMailbox",
        GUEST: "GuestMailUser",
        "partners@contoso.com": "MailUniversalDistributionGroup",
    }
    with pytest.raises(NotFoundError):
        await exchange_directory.invoke("Get-Recipient", {"Identity": "ghost@fabrikam.example"})


async def test_remove_distribution_group_member(exchange_directory: ExchangeOnlineClient) -> None:
    await _contact_in_partners(exchange_directory)
    await exchange_directory.invoke("Remove-DistributionGroupMember", {"Identity": "Partners", "Member": "Ann"})
    assert await exchange_directory.list_distribution_group_members("Partners") == []
    with pytest.raises(RejectedRequestError, match="isn't a member"):
        await exchange_directory.invoke("Remove-DistributionGroupMember", {"Identity": "Partners", "Member": "Ann"})


async def test_message_trace_rows_appear_after_the_lag_and_bounces_fail(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(trace_lag_seconds=1, bounce_domains=["bounce.example"])
    start = datetime.now(UTC) - timedelta(minutes=1)
    await graph_directory.send_mail(WELCOME, "ann@fabrikam.example", "Welcome", "Hello")
    await graph_directory.send_mail(WELCOME, "bob@bounce.example", "Welcome", "Hello")
    end = datetime.now(UTC) + timedelta(minutes=1)
    assert await exchange_directory.message_trace(WELCOME, "ann@fabrikam.example", start, end) == []
    await asyncio.sleep(1.1)
    delivered = await exchange_directory.message_trace(WELCOME, "ann@fabrikam.example", start, end)
    bounced = await exchange_directory.message_trace(WELCOME, "bob@bounce.example", start, end)
    assert [e.status for e in delivered] == ["Delivered"] and [e.status for e in bounced] == ["Failed"]
    assert delivered[0].message_id != bounced[0].message_id
    with pytest.raises(RejectedRequestError, match="at most 10 days"):
        await exchange_directory.message_trace(WELCOME, "ann@fabrikam.example", start - timedelta(days=11), end)


async def test_already_member_and_unknown_object_texts(exchange_directory: ExchangeOnlineClient) -> None:
    await _contact_in_partners(exchange_directory)
    with pytest.raises(AlreadyExistsError) as exists:
        await exchange_directory.add_distribution_group_member("Partners", "Ann")
    assert "is already a member of the group" in str(exists.value)
    with pytest.raises(NotFoundError):
        await exchange_directory.add_distribution_group_member("Partners", "ghost@fabrikam.example")


# 4. Knobs


async def test_latency_is_added_to_every_request(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(latency_ms=150, jitter_ms=50, random_seed=1)
    await exchange_directory.get_accepted_domains()
    assert tenant_sandbox.request_log[-1].seconds >= 0.15  # never less than the knob; how much more is load


async def test_token_bucket_throttles_with_retry_after_and_graph_headers(tenant_sandbox: TenantSandbox) -> None:
    tenant_sandbox.set_knobs(throttle={"graph": {"requests_per_second": 0.5, "burst": 2}})
    url = f"{tenant_sandbox.graph_base_url}/users/{ADELE}"
    headers = tenant_sandbox.authorization("graph")
    async with httpx.AsyncClient() as http:
        answers = [await http.get(url, headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[1].headers["x-ms-throttle-limit-percentage"] == "1.0"
    throttled = answers[2]
    assert throttled.headers["Retry-After"] == "2" and throttled.json()["error"]["code"] == "TooManyRequests"
    assert throttled.headers["x-ms-throttle-scope"].startswith("Tenant_Application/")
    assert throttled.headers["x-ms-resource-unit"] == "1"
    graph = MsGraphDirectory(
        FullRightsCredential(tenant_sandbox.tenant_id), base_url=tenant_sandbox.graph_base_url, max_in_process_retries=0
    )
    try:
        with pytest.raises(ThrottledError) as raised:
            await graph.get_group(PARTNERS)
    finally:
        await graph.close()
    assert raised.value.retry_after is not None and raised.value.retry_after >= 1


async def test_each_app_has_its_own_graph_bucket(
    tenant_sandbox: TenantSandbox, graph_directory: MsGraphDirectory
) -> None:
    """Graph's identity limits are per application and tenant (x-ms-throttle-scope Tenant_Application/…/<app>/<tenant>)."""
    tenant_sandbox.set_knobs(throttle={"graph": {"requests_per_second": 0.1, "burst": 1}})
    url = f"{tenant_sandbox.graph_base_url}/users/{ADELE}"
    async with httpx.AsyncClient() as http:
        tester = [await http.get(url, headers=tenant_sandbox.authorization("graph")) for _ in range(2)]
    assert [a.status_code for a in tester] == [200, 429]
    assert (
        tester[1].headers["x-ms-throttle-scope"]
        == f"Tenant_Application/ReadWrite/sandbox-tester/{tenant_sandbox.tenant_id}"
    )
    assert await graph_directory.get_group(PARTNERS)  # the app's own bucket is still full


async def test_exchange_refuses_requests_past_the_tenants_concurrency_limit(tenant_sandbox: TenantSandbox) -> None:
    """Past the tenant's limit, every app's request gets the plain-text concurrency answer at once, without
    Retry-After; the client reads it as throttling. A finished request frees its place."""
    tenant_sandbox.set_knobs(latency_ms=400, exchange_concurrency={"requests": 2})
    invoke = f"{tenant_sandbox.exchange_base_url}/adminapi/beta/{tenant_sandbox.tenant_id}/InvokeCommand"
    body = {"CmdletInput": {"CmdletName": "Get-AcceptedDomain", "Parameters": {}}}
    async with httpx.AsyncClient() as http:

        async def call(delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await http.post(invoke, json=body, headers=tenant_sandbox.authorization("exchange"))

        # Two start, the third and fourth arrive while both are in flight.
        answers = await asyncio.gather(call(0), call(0), call(0.1), call(0.15))
        assert [a.status_code for a in answers] == [200, 200, 429, 429]
        refused = answers[2]
        assert refused.text == CONCURRENCY_LIMIT_ANSWER and "Retry-After" not in refused.headers
        assert (await call(0)).status_code == 200  # both finished: there is room again
    tenant_sandbox.set_knobs(exchange_concurrency={"requests": 1, "status": 503})
    exchange = ExchangeOnlineClient(
        FullRightsCredential(tenant_sandbox.tenant_id),
        tenant_id=tenant_sandbox.tenant_id,
        base_url=tenant_sandbox.exchange_base_url,
        max_in_process_retries=0,
    )
    try:
        outcomes = await asyncio.gather(
            exchange.get_accepted_domains(), exchange.get_accepted_domains(), return_exceptions=True
        )
    finally:
        await exchange.close()
    assert sum(isinstance(o, ThrottledError) for o in outcomes) == 1
    assert sum(isinstance(o, frozenset) for o in outcomes) == 1


def test_exchange_pages_as_the_caller_prefers_up_to_its_largest_page() -> None:
    """`Prefer: odata.maxpagesize=N` (ExoHelper and CIPP send it; ExoHelper caps N at 1,000) sets the page."""
    seed = TenantSeed.demo().with_staff_in("partners@contoso.com", 30)
    with TenantSandbox(seed, page_size=10, exchange_page_size=25) as sandbox:
        invoke = f"{sandbox.exchange_base_url}/adminapi/beta/{sandbox.tenant_id}/InvokeCommand"
        body = {"CmdletInput": {"CmdletName": "Get-DistributionGroupMember", "Parameters": {"Identity": "Partners"}}}

        def first_page(prefer: str | None) -> int:
            headers = sandbox.authorization("exchange") | ({"Prefer": prefer} if prefer else {})
            answer = httpx.post(invoke, json=body, headers=headers)
            assert "@odata.nextLink" in answer.json()
            return len(answer.json()["value"])

        assert first_page(None) == 10
        assert first_page("odata.maxpagesize=20") == 20
        assert first_page("odata.maxpagesize=1000") == 25


async def test_error_rate_answers_5xx_at_random(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.set_knobs(error_rate={"exchange": {"rate": 1.0, "status": 503}})
    with pytest.raises(TransientDirectoryError):
        await exchange_directory.get_accepted_domains()
    tenant_sandbox.set_knobs(error_rate={"exchange": {"rate": 0.5}}, random_seed=7)
    outcomes = []
    for _ in range(40):
        try:
            await exchange_directory.get_accepted_domains()
            outcomes.append(True)
        except TransientDirectoryError:
            outcomes.append(False)
    assert 5 < outcomes.count(False) < 35


async def test_scripted_faults_hit_only_their_cmdlet(
    tenant_sandbox: TenantSandbox, exchange_directory: ExchangeOnlineClient
) -> None:
    tenant_sandbox.inject("exchange", 503, count=3, operation="New-MailContact")
    for _ in range(3):
        with pytest.raises(TransientDirectoryError):
            await exchange_directory.new_mail_contact(
                name="Ann", external_email_address="ann@fabrikam.example", display_name="Ann"
            )
        assert await exchange_directory.get_accepted_domains()  # other cmdlets are unaffected
    created = await exchange_directory.new_mail_contact(
        name="Ann", external_email_address="ann@fabrikam.example", display_name="Ann"
    )
    assert created.name == "Ann"
    statuses = [(e.operation, e.status) for e in tenant_sandbox.request_log if e.operation == "New-MailContact"]
    assert statuses == [("New-MailContact", 503)] * 3 + [("New-MailContact", 200)]


def test_admin_endpoint_changes_knobs_scripts_faults_and_reads_the_log(tenant_sandbox: TenantSandbox) -> None:
    admin = f"{tenant_sandbox.base_url}/_sandbox"
    changed = httpx.patch(f"{admin}/knobs", json={"latency_ms": 5, "bounce_domains": ["bounce.example"]})
    assert changed.status_code == 200 and changed.json()["latency_ms"] == 5
    assert tenant_sandbox.gate.knobs.bounce_domains == ("bounce.example",)
    assert httpx.get(f"{admin}/knobs").json()["bounce_domains"] == ["bounce.example"]
    bad = httpx.patch(f"{admin}/knobs", json={"latency_ms": -1})
    assert bad.status_code == 422 and bad.json()["error"][0]["loc"] == ["latency_ms"]
    assert httpx.patch(f"{admin}/knobs", json={"unknown": 1}).status_code == 422
    assert httpx.put(f"{admin}/knobs", json={}).json()["latency_ms"] == 0  # PUT replaces every knob
    scripted = httpx.post(f"{admin}/faults", json={"face": "graph", "status": 503, "count": 2})
    assert scripted.status_code == 201 and scripted.json()[0]["count"] == 2
    assert httpx.post(f"{admin}/faults", json={"face": "smtp", "status": 503}).status_code == 422
    url = f"{tenant_sandbox.graph_base_url}/users/{ADELE}"
    assert [httpx.get(url, headers=tenant_sandbox.authorization("graph")).status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    log = httpx.get(f"{admin}/requests").json()
    assert [(e["face"], e["operation"], e["status"]) for e in log[-3:]] == [
        ("graph", "GET /v1.0/users/{id}", s) for s in (503, 503, 200)
    ]
    assert httpx.delete(f"{admin}/requests").status_code == 204 and len(tenant_sandbox.request_log) == 0


def test_knobs_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "knobs.json"
    good.write_text('{"latency_ms": 20, "throttle": {"exchange": {"requests_per_second": 5, "burst": 10}}}')
    assert Knobs.load(good).throttle["exchange"].burst == 10
    bad = tmp_path / "bad.json"
    bad.write_text('{"throttle": {"smtp": {"requests_per_second": 5}}}')
    with pytest.raises(ValueError, match="smtp"):
        Knobs.load(bad)


# 5. Auth


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (None, "Access token is empty."),
        ("Bearer not-a-jwt", "IDX14100"),
        ("Basic dXNlcjpwYXNz", "Access token is empty."),
    ],
)
def test_missing_or_malformed_token_is_401(tenant_sandbox: TenantSandbox, header: str | None, problem: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{tenant_sandbox.graph_base_url}/users/{ADELE}", headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert problem in response.json()["error"]["message"]


class _AzureManagementToken(FullRightsCredential):
    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return await super().get_token("https://management.azure.com/.default")


def _expired(tenant_id: str) -> FullRightsCredential:
    return FullRightsCredential(tenant_id, expires_in=-60)


OTHER_TENANT = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(lambda tenant: _AzureManagementToken(tenant), id="wrong-audience"),
        pytest.param(lambda tenant: FullRightsCredential(OTHER_TENANT), id="another-tenant"),
        pytest.param(_expired, id="expired"),
    ],
)
async def test_a_token_that_is_not_for_this_call_is_refused_by_both_faces(
    tenant_sandbox: TenantSandbox, refused: Callable[[str], FullRightsCredential]
) -> None:
    credential = refused(tenant_sandbox.tenant_id)
    graph = MsGraphDirectory(credential, base_url=tenant_sandbox.graph_base_url)
    exchange = ExchangeOnlineClient(
        credential,
        tenant_id=tenant_sandbox.tenant_id,
        base_url=tenant_sandbox.exchange_base_url,
    )
    try:
        with pytest.raises(PermissionDeniedError) as by_graph:
            await graph.get_group(PARTNERS)
        with pytest.raises(PermissionDeniedError) as by_exchange:
            await exchange.get_accepted_domains()
    finally:
        await graph.close()
        await exchange.close()
    assert (by_graph.value.status, by_exchange.value.status) == (401, 401)


@pytest.fixture
def counted(tenant_sandbox: TenantSandbox) -> TenantSandbox:
    tenant_sandbox.request_log.clear()
    return tenant_sandbox


async def test_request_log_names_face_operation_status_and_latency(
    counted: TenantSandbox, graph_directory: MsGraphDirectory, exchange_directory: ExchangeOnlineClient
) -> None:
    counted.set_knobs(latency_ms=150)
    await graph_directory.find_group_by_mail("partners@contoso.com")
    await exchange_directory.find_mail_contact("ghost")
    entries = counted.request_log.entries()
    assert [(e.face, e.operation, e.status) for e in entries] == [
        ("graph", "GET /v1.0/groups", 200),
        ("exchange", "Get-MailContact", 404),
    ]
    assert all(e.seconds >= 0.15 for e in entries), "the logged latency includes the knob's"
