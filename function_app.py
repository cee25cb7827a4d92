"""The Azure Functions app (Python v2 model): one Service Bus-triggered function per stage, in the
pipeline's order (shared/queues.py, PIPELINE: create-contact, add-member, verify-delivery), and one
on each stage's dead-letter sub-queue so that nothing ends without an outcome."""

import azure.functions as func

from functions import triggers
from shared.logs import install_safe_log_records, quiet_third_party_loggers
from shared.startup import check_start
from shared.telemetry import configure_telemetry

install_safe_log_records()  # before anything logs: addresses and secrets masked, request ids on every record
quiet_third_party_loggers()  # the HTTP and AMQP stacks log URLs and connection events at INFO, which Azure keeps
configure_telemetry()  # Azure Monitor, only when APPLICATIONINSIGHTS_CONNECTION_STRING is set
# A broken setting or policy file stops the app here, in one line naming it: the worker then indexes
# no function and no message is taken (shared/startup.py, docs/functions-host.md).
check_start()

app = func.FunctionApp()
app.register_functions(triggers.blueprint())
