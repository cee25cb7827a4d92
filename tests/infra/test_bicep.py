"""The Bicep templates under infra/: they parse, azd's parameter file matches them, and the settings
that keep the deployment keyless are in place.

No Bicep compiler is available here, so these are checks on the parsed source (pycep-parser), not a
compilation. Every resource comes from an Azure Verified Module in the Bicep registry, so a policy
scanner reading these files sees none (checkov 3.3.30 counted 0 resources and so could fail no
check; it is not run): the security settings passed to those modules are asserted here instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.command_rights import COMMAND_RIGHTS, rights_epilog
from cli.main import app
from functions.triggers import swept_queues
from shared.journal.table_storage import LEASE_TABLE_SUFFIX, ROSTER_TABLE_SUFFIX
from shared.queues import DRIFT_QUEUE, LEASE_QUEUE, SELF_CHECK_QUEUE, StageName, intake_queues
from shared.settings import ServiceBusSettings
from standins.local_host import discover_triggers
from tests.fixtures.pipeline import indexed_app
from tests.infra.bicep import INFRA, REPOSITORY, Ref, bicep_files, function_app_template, main_template, parse

ROLE_IDS = {
    "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0": "Azure Service Bus Data Receiver",
    "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39": "Azure Service Bus Data Sender",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "76199698-9eea-4c19-bc75-cec21354c6b6": "Storage Table Data Reader",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
APP_IDENTITY = Ref("identity.outputs.principalId")
APP_IDENTITY_ID = Ref("identity.outputs.resourceId")
APP_IDENTITY_CLIENT_ID = Ref("identity.outputs.clientId")


def test_infra_has_templates() -> None:
    assert INFRA / "main.bicep" in bicep_files()
    assert INFRA / "app" / "function-app.bicep" in bicep_files()


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: str(path.relative_to(INFRA)))
def test_template_parses(path: Path) -> None:
    try:
        parse(path)
    except Exception as error:
        pytest.fail(f"pycep-parser cannot parse infra/{path.relative_to(INFRA)}:\n{error}", pytrace=False)


def test_parameter_file_sets_every_parameter_from_the_azd_environment() -> None:
    """azd substitutes ${VAR}; an unset VAR leaves the Bicep default in force (Azure/azure-dev#2896)."""
    file = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(file) == set(main_template().parameters)
    for name, entry in file.items():
        assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", entry["value"]), (
            f"{name}: use a plain ${{VAR}}, so the default stays in infra/main.bicep alone"
        )


def _site(**main_parameters: Any) -> dict[str, Any]:
    app = function_app_template(**main_parameters)
    return app.evaluate(app.module_params("site"))  # type: ignore[no-any-return]


def test_python_version_is_one_parameter_defaulting_to_the_indexed_worker() -> None:
    """3.13: the Python whose worker (azure-functions-runtime, pinned in requirements.txt) tests/worker indexes."""
    assert main_template().parameters["pythonVersion"]["default"] == "3.13"
    assert "azure-functions-runtime==" in (REPOSITORY / "requirements.txt").read_text()
    assert _site()["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.13"}
    assert _site(pythonVersion="3.12")["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.12"}


def test_storage_accepts_identities_only() -> None:
    main = main_template()
    storage = main.evaluate(main.module_params("storage"))
    assert storage["allowSharedKeyAccess"] is False
    assert storage["defaultToOAuthAuthentication"] is True
    assert storage["allowBlobPublicAccess"] is False
    assert storage["minimumTlsVersion"] == "TLS1_2"
    assert [table["name"] for table in storage["tableServices"]["tables"]] == [JOURNAL_TABLE, LEASE_TABLE, ROSTER_TABLE]


def test_service_bus_is_standard_with_local_auth_off_and_no_sas_rule() -> None:
    main = main_template()
    service_bus = main.evaluate(main.module_params("serviceBus"))
    assert service_bus["skuObject"]["name"] == "Standard"  # duplicate detection and scheduling
    assert service_bus["disableLocalAuth"] is True
    assert service_bus["authorizationRules"] == []
    for queue in service_bus["queues"]:
        assert queue["authorizationRules"] == [], queue["name"]


def test_monitoring_accepts_entra_id_only() -> None:
    main = main_template()
    assert main.evaluate(main.module_params("appInsights"))["disableLocalAuth"] is True
    assert main.evaluate(main.module_params("logAnalytics"))["features"]["disableLocalAuth"] is True


def test_function_app_is_flex_consumption_with_a_user_assigned_identity() -> None:
    main = main_template()
    plan = main.evaluate(main.module_params("plan"))
    assert (plan["skuName"], plan["reserved"]) == ("FC1", True)
    site = _site()
    assert site["serverFarmResourceId"] == Ref("plan.outputs.resourceId")
    assert site["managedIdentities"] == {"userAssignedResourceIds": [APP_IDENTITY_ID]}
    assert site["httpsOnly"] is True
    assert site["tags"]["'azd-service-name'"] == "onboarding"  # azure.yaml's service name
    config = site["functionAppConfig"]
    assert config["deployment"]["storage"]["type"] == "blobContainer"
    assert config["deployment"]["storage"]["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": APP_IDENTITY_ID,
    }
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] == 2048


def _role_assignments(module: str, **parameters: Any) -> set[tuple[object, str]]:
    """(principal, role) of the assignments on a module's resource itself (not on its children)."""
    main = main_template(**parameters)
    assignments = main.evaluate(main.module_params(module).get("roleAssignments", []))
    return {(entry["principalId"], ROLE_IDS[entry["roleDefinitionIdOrName"]]) for entry in assignments}


RECEIVER = "Azure Service Bus Data Receiver"
SENDER = "Azure Service Bus Data Sender"
TABLE_CONTRIBUTOR = "Storage Table Data Contributor"
TABLE_READER = "Storage Table Data Reader"
OPERATOR = "00000000-0000-0000-0000-00000000beef"
UPSTREAMS = ("00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2")

# The names the code uses: the stage queues, the outcome queue's default (ONBOARDING_OUTCOME_QUEUE),
# and the journal table the infrastructure names in ONBOARDING_JOURNAL.
STAGE_QUEUES = frozenset(stage.value for stage in StageName)
CREATE_CONTACT = StageName.CREATE_CONTACT.value
OUTCOME_QUEUE = ServiceBusSettings.model_fields["outcome_queue"].default
JOURNAL_TABLE = "onboardingjournal"
LEASE_TABLE = JOURNAL_TABLE + LEASE_TABLE_SUFFIX
ROSTER_TABLE = JOURNAL_TABLE + ROSTER_TABLE_SUFFIX

Rights = frozenset[tuple[str, str]]  # (role, queue or table)


def _on(role: str, *names: str) -> Rights:
    return frozenset((role, name) for name in names)


# What each `onboard` command calls on Service Bus and the journal, and the line docs/deploy.md (and
# the command's --help) states for it. Read from cli/: submit and bulk send to create-contact
# (upstream.submit, bulk.send_rows); `submit --request-id` peeks create-contact for a waiting
# duplicate (upstream.is_queued) and reads the journal for when it was handled (main._first_handled,
# silent when it cannot); --wait peeks the outcome queue (upstream.mark_outcomes,
# wait_for_outcome[s]); status reads the journal, peeks create-contact for an unknown id and, with
# --watch, every stage queue and its dead-letter sub-queue (upstream.peek_count); dlq list and show
# peek dead-letter sub-queues (list: also those of doctor, leases and drift, dlq.count_other_dead_letters); purge receives from them; replay receives and sends back to the same
# stage queue (dlq.replay). Peeking is receiving as far as roles go.
_ONE_REQUEST = (
    _on(SENDER, CREATE_CONTACT) | _on(RECEIVER, CREATE_CONTACT, OUTCOME_QUEUE) | _on(TABLE_READER, JOURNAL_TABLE)
)
OPERATOR_COMMANDS: dict[str, Rights] = {
    "submit": _ONE_REQUEST,
    "offboard": _ONE_REQUEST,  # submit's flow with action offboard (cli/submit.py)
    "update": _ONE_REQUEST,
    "bulk": _on(SENDER, CREATE_CONTACT) | _on(RECEIVER, OUTCOME_QUEUE),
    # --watch shows the drift watch's last sweep, read from the roster's table
    "status": _on(TABLE_READER, JOURNAL_TABLE, ROSTER_TABLE) | _on(RECEIVER, *STAGE_QUEUES),
    "leases": _on(TABLE_READER, LEASE_TABLE),
    "drift": _on(TABLE_READER, ROSTER_TABLE),
    "dlq list": _on(RECEIVER, *STAGE_QUEUES, SELF_CHECK_QUEUE, LEASE_QUEUE, DRIFT_QUEUE),  # counts the others' too
    "dlq show": _on(RECEIVER, *STAGE_QUEUES),
    "dlq replay": _on(RECEIVER, *STAGE_QUEUES) | _on(SENDER, *STAGE_QUEUES),
    "dlq purge": _on(RECEIVER, *STAGE_QUEUES),
    "grant": frozenset(),  # Graph and Entra only
    # doctor sends its request to the doctor queue and, with --wait, peeks the outcome queue for the report;
    # its queue check needs Manage (Data Owner), which the template does not give: without it, that check is skipped.
    "doctor": _on(SENDER, SELF_CHECK_QUEUE) | _on(RECEIVER, OUTCOME_QUEUE),
}


def _app_rights() -> Rights:
    """What the function app's code calls: each trigger receives from its queue, and the dead-letter
    sweep peeks the same queues' dead-letter sub-queues (covered by the queue's role: functions/triggers.py
    swept_queues); a stage passes on to the next stage queue or schedules a retry on its own
    (shared/runner.py), so it sends to every stage queue; outcomes go to the outcome queue (a ReplyTo
    queue is its upstream's to grant); the journal is written."""
    triggers = discover_triggers(indexed_app())
    received = {trigger.queue_name for trigger in triggers} | set(swept_queues())
    # Leases: the app schedules wake-ups on the leases queue and keeps leases in their table (shared/leases.py).
    # The drift watch: it sends and schedules its pages and checks and keeps the roster (shared/drift/).
    sent = _on(SENDER, *STAGE_QUEUES, OUTCOME_QUEUE, LEASE_QUEUE, DRIFT_QUEUE)
    return _on(RECEIVER, *received) | sent | _on(TABLE_CONTRIBUTOR, JOURNAL_TABLE, LEASE_TABLE, ROSTER_TABLE)


def _data_rights(**parameters: Any) -> dict[object, Rights]:
    """Each principal's data roles on the queues and the journal table, as the template assigns them."""
    main = main_template(**parameters)
    queues = main.evaluate(main.module_params("serviceBus")["queues"])
    tables = main.evaluate(main.module_params("storage")["tableServices"]["tables"])
    rights: dict[object, set[tuple[str, str]]] = {}
    for entity in (*queues, *tables):
        for entry in entity.get("roleAssignments", []):
            rights.setdefault(entry["principalId"], set()).add(
                (ROLE_IDS[entry["roleDefinitionIdOrName"]], entity["name"])
            )
    return {principal: frozenset(pairs) for principal, pairs in rights.items()}


def test_every_data_role_is_on_a_queue_or_the_table_and_matches_what_the_code_calls() -> None:
    rights = _data_rights(operatorPrincipalId=OPERATOR, upstreamSenderPrincipalIds=list(UPSTREAMS))
    expected: dict[object, Rights] = {upstream: _on(SENDER, CREATE_CONTACT) for upstream in UPSTREAMS}
    expected[APP_IDENTITY] = _app_rights()
    expected[OPERATOR] = frozenset().union(*OPERATOR_COMMANDS.values())
    assert rights == expected


def test_no_data_role_on_the_namespace_or_the_account() -> None:
    """Roles there would reach every queue, including upstreams' reply queues, or every table."""
    named = {"operatorPrincipalId": OPERATOR, "upstreamSenderPrincipalIds": list(UPSTREAMS)}
    assert _role_assignments("serviceBus", **named) == set()
    assert _role_assignments("storage", **named) == {(APP_IDENTITY, "Storage Blob Data Owner")}  # host storage
    assert _role_assignments("appInsights", **named) == {(APP_IDENTITY, "Monitoring Metrics Publisher")}


def test_operator_and_upstream_rights_only_when_named() -> None:
    assert set(_data_rights()) == {APP_IDENTITY}
    assert set(_data_rights(upstreamSenderPrincipalIds=[UPSTREAMS[0]])) == {APP_IDENTITY, UPSTREAMS[0]}


def test_deploy_guide_and_help_state_each_commands_rights() -> None:
    """docs/deploy.md's table of commands and their rights, and each command's --help: cli/command_rights.py."""
    assert set(OPERATOR_COMMANDS) == set(COMMAND_RIGHTS)
    guide = (REPOSITORY / "docs" / "deploy.md").read_text()
    stated = dict(re.findall(r"^\| `onboard ([a-z ]+)` \| (.+?) \|$", guide, re.MULTILINE))
    assert stated == COMMAND_RIGHTS
    for command in COMMAND_RIGHTS:
        shown = CliRunner().invoke(app, [*command.split(), "--help"], terminal_width=200)
        assert shown.exit_code == 0, shown.output
        assert rights_epilog(command) in " ".join(shown.output.split()), command


def _app_settings(**main_parameters: Any) -> dict[str, Any]:
    return {setting["name"]: setting["value"] for setting in _site(**main_parameters)["siteConfig"]["appSettings"]}


def test_app_settings_hold_no_secret() -> None:
    settings = _app_settings(policyFile="policy.json")
    for name in ("AzureWebJobsStorage", "ServiceBusConnection"):
        assert name not in settings, f"{name}: a connection string; use the identity-based {name}__* settings"
    for name, value in settings.items():
        text = value if isinstance(value, str) else ""
        assert not re.search(r"AccountKey=|SharedAccessKey|InstrumentationKey=", text, re.IGNORECASE), name


def test_app_settings_are_identity_based() -> None:
    settings = _app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    for name in ("AzureWebJobsStorage__clientId", "ONBOARDING_MANAGED_IDENTITY_CLIENT_ID"):
        assert settings[name] == APP_IDENTITY_CLIENT_ID, name
    for service in ("blob", "queue", "table"):
        assert settings[f"AzureWebJobsStorage__{service}ServiceUri"] == Ref(
            f"storage.outputs.serviceEndpoints.{service}"
        )
    assert settings["APPLICATIONINSIGHTS_CONNECTION_STRING"] == Ref("appInsights.outputs.connectionString")
    assert (
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
        == "ClientId=${identity.outputs.clientId};Authorization=AAD"
    )
    assert settings["ONBOARDING_JOURNAL"] == "${storage.outputs.serviceEndpoints.table}onboardingjournal"
    assert settings["ONBOARDING_DIRECTORY_CREDENTIAL"] == "managed-identity"
    assert settings["ONBOARDING_TENANT_ID"] == Ref("onboardingTenantId")
    assert "ONBOARDING_TENANT_DOMAIN" not in settings  # the app reads none (docs/settings.md)


def test_policy_file_setting_only_when_given() -> None:
    """An empty ONBOARDING_POLICY_FILE would be read as the path "."; without it the app denies every request."""
    assert "ONBOARDING_POLICY_FILE" not in _app_settings(policyFile="")
    assert _app_settings(policyFile="policy.json")["ONBOARDING_POLICY_FILE"] == "policy.json"


def test_the_welcome_message_is_on_only_with_a_sender() -> None:
    """docs/deploy.md, step 10: ONBOARDING_WELCOME_SENDER in the azd environment turns it on."""
    assert "ONBOARDING_WELCOME_SENDER" not in _app_settings(welcomeSender="")
    assert _app_settings(welcomeSender="welcome@contoso.com")["ONBOARDING_WELCOME_SENDER"] == "welcome@contoso.com"
    parameters = json.loads((REPOSITORY / "infra" / "main.parameters.json").read_text())["parameters"]
    assert parameters["welcomeSender"] == {"value": "${ONBOARDING_WELCOME_SENDER}"}


def test_a_sources_own_intake_queue_is_read_by_the_app_and_sent_to_by_that_source_only() -> None:
    """docs/security.md, "Sources": the queue, its rights, and the setting that gives it a trigger."""
    partner = "00000000-0000-0000-0000-0000000000b1"
    intake = [{"name": "intake-partner-portal", "senderPrincipalId": partner}]
    rights = _data_rights(intakeQueues=intake, operatorPrincipalId=OPERATOR)
    assert rights[partner] == _on(SENDER, "intake-partner-portal")
    assert _on(RECEIVER, "intake-partner-portal") | _on(SENDER, "intake-partner-portal") <= rights[APP_IDENTITY]
    settings = _app_settings(intakeQueues=intake)
    assert intake_queues(settings) == ("intake-partner-portal",)
    assert "ONBOARDING_INTAKE_QUEUES" not in _app_settings()
    main = main_template(intakeQueues=intake)
    queues = main.evaluate(main.module_params("serviceBus")["queues"])
    shared, own = (next(q for q in queues if q["name"] == name) for name in (CREATE_CONTACT, "intake-partner-portal"))
    assert {k: v for k, v in own.items() if k not in {"name", "roleAssignments"}} == {
        k: v for k, v in shared.items() if k not in {"name", "roleAssignments"}
    }


def test_scale_comes_from_parameters() -> None:
    default = _site()["functionAppConfig"]["scaleAndConcurrency"]
    assert (default["maximumInstanceCount"], default["alwaysReady"]) == (DEPLOYS_ANYWHERE, [])
    scale = _site(maximumInstanceCount=2, alwaysReadyInstances=1)["functionAppConfig"]["scaleAndConcurrency"]
    assert scale["maximumInstanceCount"] == 2
    assert scale["alwaysReady"] == [
        {"name": f"function:{name}", "instanceCount": 1} for name in ("create_contact", "add_member", "verify_delivery")
    ]
    assert (
        _app_settings(maxConcurrentCalls=3)["AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls"] == "3"
    )


def test_exchange_share_of_the_tenant_is_a_parameter_left_out_by_default() -> None:
    """ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS (docs/capacity.md): unset unless the deployment sizes it."""
    assert "ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS" not in _app_settings()
    settings = _app_settings(exchangeConcurrentRequests="3")
    assert settings["ONBOARDING_EXCHANGE_CONCURRENT_REQUESTS"] == "3"


# Flex Consumption accepts a maximumInstanceCount below 40 only in a few regions, as a preview.
DEPLOYS_ANYWHERE = 40


def test_the_default_ceiling_per_function_is_the_one_the_deploy_guide_states() -> None:
    """Instances cannot go below 40 everywhere, so the per-instance concurrency bounds the tenant's load.
    host.json's number serves the one local process; the app setting overrides it in Azure."""
    parameters = main_template().parameters
    instances, calls = (parameters[name]["default"] for name in ("maximumInstanceCount", "maxConcurrentCalls"))
    assert instances == DEPLOYS_ANYWHERE
    host = json.loads((INFRA.parent / "host.json").read_text())
    assert calls <= host["extensions"]["serviceBus"]["maxConcurrentCalls"]
    guide = (REPOSITORY / "docs" / "deploy.md").read_text()
    assert f"`{instances} \u00d7 {calls} = {instances * calls}` by default" in guide
