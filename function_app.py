"""The Azure Functions app (Python v2 model): one Service Bus-triggered function per stage, and one on
each stage's dead-letter sub-queue so that nothing ends without an outcome."""

import azure.functions as func

from functions import add_member, create_contact, dead_letters, verify_delivery
from shared.logs import install_safe_log_records
from shared.telemetry import configure_telemetry

install_safe_log_records()  # before anything logs: addresses masked, request ids on every record
configure_telemetry()  # Azure Monitor, only when APPLICATIONINSIGHTS_CONNECTION_STRING is set

app = func.FunctionApp()
for blueprint in (create_contact, add_member, verify_delivery, dead_letters):
    app.register_functions(blueprint.bp)
