"""The functions that function_app.py indexes find what they need in infra/.

The app is indexed the way the local host does it (standins/local_host.py, `app.get_functions()`).
Each Service Bus trigger's queue must be in infra/main.bicep with the properties of the emulator's
queues (standins/servicebus_emulator/config.json), and its connection must have the identity-based
settings in the function app's app settings (infra/app/function-app.bicep).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from pydantic import AliasChoices, TypeAdapter

from shared.queues import PIPELINE
from shared.settings import Settings
from standins.local_host import QueueTrigger, discover_triggers
from tests.fixtures.pipeline import indexed_app
from tests.infra.bicep import REPOSITORY, Ref, function_app_template, main_template

EMULATOR_CONFIG = REPOSITORY / "standins" / "servicebus_emulator" / "config.json"


@pytest.fixture(scope="module")
def triggers() -> tuple[QueueTrigger, ...]:
    # discover_triggers is cached: get_functions() cannot run twice on one app.
    found = discover_triggers(indexed_app())
    assert found, "function_app.py indexes no Service Bus trigger"
    return found


@pytest.fixture(scope="module")
def emulator_queues() -> dict[str, dict[str, Any]]:
    (namespace,) = json.loads(EMULATOR_CONFIG.read_text())["UserConfig"]["Namespaces"]
    return {queue["Name"]: queue["Properties"] for queue in namespace["Queues"]}


@pytest.fixture(scope="module")
def bicep_queues() -> dict[str, dict[str, Any]]:
    main = main_template()
    queues = main.evaluate(main.module_params("serviceBus")["queues"])
    return {queue["name"]: queue for queue in queues}


@pytest.fixture(scope="module")
def app_settings() -> dict[str, Any]:
    app = function_app_template()
    return {setting["name"]: setting["value"] for setting in app.variable("siteAppSettings")}


def _camel(name: str) -> str:
    """The emulator's MaxDeliveryCount is the ARM template's maxDeliveryCount."""
    return name[0].lower() + name[1:]


def test_every_trigger_queue_is_provisioned_like_the_emulator_queue(
    triggers: tuple[QueueTrigger, ...],
    emulator_queues: dict[str, dict[str, Any]],
    bicep_queues: dict[str, dict[str, Any]],
) -> None:
    for trigger in triggers:
        queue_name = trigger.queue_name
        assert queue_name in bicep_queues, f"{trigger.function_name}: no queue {queue_name!r} in infra"
        assert queue_name in emulator_queues, (
            f"{trigger.function_name}: no queue {queue_name!r} in {EMULATOR_CONFIG.name}"
        )
        expected = {_camel(name): value for name, value in emulator_queues[queue_name].items()}
        provisioned = {name: bicep_queues[queue_name].get(name) for name in expected}
        assert provisioned == expected, queue_name


def test_infra_and_emulator_have_the_same_queues(
    emulator_queues: dict[str, dict[str, Any]], bicep_queues: dict[str, dict[str, Any]]
) -> None:
    """The outcome queue has no trigger here, but the app publishes to it: it must exist too."""
    assert set(bicep_queues) == set(emulator_queues)
    for name, properties in emulator_queues.items():
        assert {_camel(key): bicep_queues[name].get(_camel(key)) for key in properties} == {
            _camel(key): value for key, value in properties.items()
        }, name
    assert function_app_template().overrides["outcomeQueueName"] in bicep_queues


def test_every_trigger_connection_is_identity_based(
    triggers: tuple[QueueTrigger, ...], app_settings: dict[str, Any]
) -> None:
    identity = Ref("identity.outputs.clientId")
    for trigger in triggers:
        connection = trigger.connection
        assert connection not in app_settings, f"{connection}: a connection string; use {connection}__* settings"
        assert (
            app_settings.get(f"{connection}__fullyQualifiedNamespace")
            == "${serviceBus.outputs.name}.servicebus.windows.net"
        )
        assert app_settings.get(f"{connection}__credential") == "managedidentity"
        assert app_settings.get(f"{connection}__clientId") == identity


def test_max_delivery_count_setting_is_the_queues_max_delivery_count(
    bicep_queues: dict[str, dict[str, Any]], app_settings: dict[str, Any]
) -> None:
    main = main_template()
    # One Bicep variable feeds both (not two equal numbers).
    assert main.variables["queueProperties"]["value"]["maxDeliveryCount"] == "maxDeliveryCount"
    assert main.module_params("functionApp")["maxDeliveryCount"] == "maxDeliveryCount"
    for queue in bicep_queues.values():
        assert app_settings["ONBOARDING_SERVICEBUS_MAX_DELIVERY_COUNT"] == str(queue["maxDeliveryCount"])


def test_always_ready_names_the_indexed_stage_functions(triggers: tuple[QueueTrigger, ...]) -> None:
    """The dead-letter sweep (a timer) needs no always-ready instance: a late outcome for a dead letter is fine;
    nor does the doctor, which an operator waits for by hand."""
    stages = {trigger.function_name for trigger in triggers if trigger.queue_name in {s.value for s in PIPELINE}}
    assert set(main_template().variable("serviceBusFunctionNames")) == stages


def test_app_settings_are_settings_the_app_reads(app_settings: dict[str, Any]) -> None:
    """Every ONBOARDING_* setting in infra is a field of shared/settings.py (a typo would be silently ignored)."""
    prefix = Settings.model_config.get("env_prefix", "")
    known = {prefix + field.upper() for field in Settings.model_fields}
    unknown = {name for name in app_settings if name.startswith(prefix) and name not in known}
    assert not unknown, f"not read by the app: {sorted(unknown)}"


def test_app_settings_pass_the_apps_start_up_validation(
    app_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With example values for what only a deployment knows, Settings() accepts what infra sets."""
    deployment = {
        Ref("onboardingTenantId"): "11111111-2222-3333-4444-555555555555",
        Ref("identity.outputs.clientId"): "66666666-7777-8888-9999-000000000000",
        Ref("appInsights.outputs.connectionString"): "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        Ref("storage.outputs.serviceEndpoints.blob"): "https://stexample.blob.core.windows.net/",
        Ref("storage.outputs.serviceEndpoints.queue"): "https://stexample.queue.core.windows.net/",
        Ref("storage.outputs.serviceEndpoints.table"): "https://stexample.table.core.windows.net/",
    }
    outputs = {"${storage.outputs.serviceEndpoints.table}": deployment[Ref("storage.outputs.serviceEndpoints.table")]}
    outputs["${serviceBus.outputs.name}"] = "sb-example"
    outputs["${identity.outputs.clientId}"] = deployment[Ref("identity.outputs.clientId")]
    for name in list(os.environ):
        if name.startswith(("ONBOARDING_", "ServiceBusConnection", "APPLICATIONINSIGHTS_")):
            monkeypatch.delenv(name)
    for name, value in app_settings.items():
        if isinstance(value, Ref):
            value = deployment[value]
        for placeholder, example in outputs.items():
            value = value.replace(placeholder, example)
        assert "${" not in value, f"{name}: {value}"
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.servicebus_namespace == "sb-example.servicebus.windows.net"
    assert settings.servicebus_connection_string is None
    assert settings.directory_credential == "managed-identity"
    assert settings.managed_identity_client_id == deployment[Ref("identity.outputs.clientId")]
    assert settings.journal is not None
    assert settings.journal.get_secret_value() == "https://stexample.table.core.windows.net/onboardingjournal"


# `azd provision` replaces every app setting, so a setting the app reads survives only if the template
# sets it. Each field of shared/settings.py is one of three kinds; a new field that is none of them
# fails test_every_setting_the_app_reads_is_set_by_the_template.
# Set from what the template creates (or fixed by it), not chosen by whoever deploys:
FROM_INFRASTRUCTURE = {
    "servicebus_namespace": "the namespace the template creates",
    "outcome_queue": "the outcome queue the template creates",
    "directory_credential": "always the managed identity in Azure",
    "managed_identity_client_id": "the identity the template creates",
    "journal": "the table the template creates",
    "servicebus_max_delivery_count": "the queues' MaxDeliveryCount, one Bicep variable for both",
    "intake_queues": "the names of the intakeQueues parameter's queues (ONBOARDING_INTAKE_QUEUE_DEFINITIONS)",
}
# Never set in Azure, and why:
NOT_IN_AZURE = {
    "servicebus_connection_string": "Azure connects with the identity (ServiceBusConnection__fullyQualifiedNamespace)",
    "allow_sandbox_credential": "a flag of the local stand-ins only",
    "graph_base_url": "the tenant sandbox's URL locally; Microsoft Graph's default in Azure",
    "exchange_base_url": "the tenant sandbox's URL locally; Exchange Online's default in Azure",
    "tenant_domain": "read by no code: still accepted, so an older deployment's setting stays valid",
}
# Every other field is a parameter of infra/main.bicep, fed by an azd variable of the same name as the
# app setting (infra/main.parameters.json) and listed in docs/deploy.md's parameter table.


def _setting_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(Settings.model_config.get("env_prefix", "")) + field.upper()


def _marked_app_settings() -> tuple[dict[str, str], dict[str, Any]]:
    """The app settings when every string and int parameter of main.bicep holds a marker naming itself."""
    parameters = main_template().parameters
    markers = {name: f"<{name}>" for name, spec in parameters.items() if spec.get("type") in {"string", "int"}}
    intake = [{"name": "intake-example", "senderPrincipalId": "00000000-0000-0000-0000-0000000000b1"}]
    app = function_app_template(**markers, intakeQueues=intake)  # the intake setting exists only with a queue
    return markers, {setting["name"]: setting["value"] for setting in app.variable("siteAppSettings")}


def test_every_setting_the_app_reads_is_set_by_the_template() -> None:
    markers, settings = _marked_app_settings()
    fed_by = {value: name for name, value in markers.items()}
    azd_variables = json.loads((REPOSITORY / "infra" / "main.parameters.json").read_text())["parameters"]
    guide = (REPOSITORY / "docs" / "deploy.md").read_text()
    for field in Settings.model_fields:
        name = _setting_name(field)
        if field in NOT_IN_AZURE:
            assert name not in settings, f"{name} is set in Azure: {NOT_IN_AZURE[field]}"
            continue
        assert name in settings, f"{name}: no app setting in infra/app/function-app.bicep, so azd provision drops it"
        if field in FROM_INFRASTRUCTURE:
            continue
        parameter = fed_by.get(settings[name])
        assert parameter, f"{name} = {settings[name]!r}: not a parameter of infra/main.bicep"
        assert azd_variables.get(parameter) == {"value": "${" + name + "}"}, f"main.parameters.json: {parameter}"
        assert f"| `{name}` | `{parameter}` |" in guide, f"docs/deploy.md's parameter table lacks {name}"


def test_each_parameters_default_is_the_apps_default() -> None:
    """One default per setting: the template's, where it sets one, equals shared/settings.py's."""
    markers, settings = _marked_app_settings()
    parameters = main_template().parameters
    for field, spec in Settings.model_fields.items():
        parameter = next((p for p, marker in markers.items() if settings.get(_setting_name(field)) == marker), None)
        if parameter is None or parameters[parameter].get("default") in (None, ""):
            continue  # required, from infrastructure, or left out when empty (the app's default applies)
        default, annotation = parameters[parameter]["default"], spec.annotation
        assert annotation is not None, field
        assert TypeAdapter(annotation).validate_python(str(default)) == spec.default, parameter


def test_an_empty_optional_parameter_leaves_its_setting_out() -> None:
    """An empty ONBOARDING_WELCOME_SENDER would not validate as an address; unset, the app sends no welcome."""
    assert "ONBOARDING_WELCOME_SENDER" not in {s["name"] for s in function_app_template().variable("siteAppSettings")}
    given = function_app_template(welcomeSender="welcome@contoso.com").variable("siteAppSettings")
    assert {"name": "ONBOARDING_WELCOME_SENDER", "value": "welcome@contoso.com"} in given
