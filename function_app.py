"""The Azure Functions app (Python v2 model): one Service Bus-triggered function per stage."""

import azure.functions as func

from functions import add_member, create_contact, verify_delivery

app = func.FunctionApp()
for stage in (create_contact, add_member, verify_delivery):
    app.register_functions(stage.bp)
