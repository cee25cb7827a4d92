"""Index a v2-model function app with the Azure Functions Python worker's own indexing code.

Run with an interpreter whose environment has the worker package installed (azure-functions-runtime,
the worker library the Python 3.13+ host loads) next to the app's own requirements (.venv/worker):

    .venv/worker/bin/python tests/worker/index_probe.py .      # prints one JSON document on stdout

It runs the same three steps the worker runs on WorkerInitRequest (azure_functions_runtime/handle_event.py,
worker_init_request -> load_binding_registry -> load_function_metadata -> index_functions):

    bindings.meta.load_binding_registry()
    loader.index_function_app(<app>/function_app.py)
    loader.process_indexed_function(protos, functions.Registry(), indexed, <app>)

`protos` is the one thing the host normally hands in (the proxy worker's generated FunctionRpc
messages). No package on PyPI ships those, so this file passes a stand-in that records the keyword
arguments each message is built with; the enum values match FunctionRpc.proto (BindingInfo.Direction
in=0/out=1/inout=2, BindingInfo.DataType undefined=0/string=1/binary=2/stream=3).
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from typing import Any


class _Message:
    """Records the fields a protobuf message would be constructed with."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None


class _BindingInfo(_Message):
    # FunctionRpc.proto: enum Direction { in = 0; out = 1; inout = 2; }
    out = 1
    inout = 2
    # FunctionRpc.proto: enum DataType { undefined = 0; string = 1; binary = 2; stream = 3; }
    undefined = 0
    string = 1
    binary = 2
    stream = 3


class _RpcRetryOptions(_Message):
    class RetryStrategy:  # FunctionRpc.proto: enum RetryStrategy { exponential_backoff = 0; fixed_delay = 1; }
        exponential_backoff = 0
        fixed_delay = 1


class _Protos:
    BindingInfo = _BindingInfo
    RpcFunctionMetadata = _Message
    RpcRetryOptions = _RpcRetryOptions
    ParameterBinding = _Message


def index(app_dir: str) -> dict[str, Any]:
    app_dir = os.path.abspath(app_dir)
    # The host starts the worker with the app root on sys.path (AzureWebJobsScriptRoot).
    sys.path.insert(0, app_dir)
    os.environ.setdefault("AzureWebJobsScriptRoot", app_dir)

    from azure_functions_runtime import functions, loader
    from azure_functions_runtime.bindings import meta

    meta.load_binding_registry()
    indexed = loader.index_function_app(os.path.join(app_dir, "function_app.py"))
    registry = functions.Registry()
    results, _logs = loader.process_indexed_function(_Protos, registry, indexed, app_dir)

    out = []
    for md in results:
        info = registry.get_function(md.function_id)
        out.append(
            {
                "name": md.name,
                "script_file": md.script_file,
                "raw_bindings": [json.loads(raw) for raw in md.raw_bindings],
                "bindings": {
                    name: {"type": b.type, "direction": b.direction, "data_type": b.data_type}
                    for name, b in md.bindings.items()
                },
                "is_async": info.is_async,
                "deferred_bindings_enabled": info.deferred_bindings_enabled,
                "settlement_client_arg": info.settlement_client_arg,
                "input_types": {k: v.binding_name for k, v in info.input_types.items()},
            }
        )

    versions: dict[str, str | None] = {}
    for dist in (
        "azure-functions-runtime",
        "azure-functions",
        "azurefunctions-extensions-base",
        "azurefunctions-extensions-bindings-servicebus",
        "protobuf",
        "grpcio",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"python": sys.version.split()[0], "versions": versions, "functions": out}


if __name__ == "__main__":
    print(json.dumps(index(sys.argv[1] if len(sys.argv) > 1 else "."), indent=2, sort_keys=True))
