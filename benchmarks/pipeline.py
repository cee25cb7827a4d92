"""The whole pipeline beside a plain sequential script, on the same sandbox, in the same run (issue 13).

.venv/bin/python -m benchmarks.pipeline [--sizes 150 300] [--latency-ms 50] [--throttle 20] [--quick]

Every figure is printed beside its baseline measured in this run, as a ratio: absolute numbers
depend on the machine and on what else runs on it. The plain script is what users would write
instead: New-MailContact then Add-DistributionGroupMember (invitation then POST members/$ref for
a Microsoft 365 group), one request after another, with the project's own clients. Nothing is
asserted; see docs/performance.md for the figures and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from azure.servicebus.aio import ServiceBusClient

from cli.upstream import collect_outcomes, submit
from shared.contracts import OnboardingRequest, OutcomeStatus
from shared.directory.errors import DirectoryError
from shared.directory.exchange import ExchangeOnlineClient
from shared.directory.graph import MsGraphDirectory
from shared.settings import SERVICEBUS_CONNECTION
from standins.local_app import app_credential, grant_local_app
from standins.stack import local_stack, running_host, sandbox_app_credential
from standins.tenant_sandbox import Knobs, TenantSandbox, TenantSeed
from standins.tenant_sandbox.app import LoggedRequest
from standins.tenant_sandbox.knobs import Throttle
from tools.demo import OFFLINE_APP_SETTINGS, WELCOME_SETTINGS, demo_request

OUTCOMES = "onboarding-outcomes"
GROUPS = {
    "distribution": "partners@contoso.com",
    "mail-enabled security": "suppliers-secure@contoso.com",
    "Microsoft 365": "project-falcon@contoso.com",
}
GOALS = {"distribution": 5, "mail-enabled security": 5, "Microsoft 365": 6}
SUCCEEDED = {OutcomeStatus.SUCCEEDED, OutcomeStatus.SUCCEEDED_WITH_WARNINGS}


def requests_for(group: str, count: int, tag: str) -> list[OnboardingRequest]:
    return [
        demo_request(f"{tag}-{index}", f"person-{tag}-{index}@fabrikam.example", f"Person {tag} {index}", group)
        for index in range(count)
    ]


@dataclass
class PipelineRun:
    onboardings: int
    succeeded: int
    seconds: float
    host_cpu_seconds: float
    calls: Counter[str]  # "face operation" -> answered calls (429s are counted in `throttled` only)
    throttled: int
    dead_lettered: Counter[str]

    @property
    def rate(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0

    def calls_per_onboarding(self, face: str | None = None) -> float:
        total = sum(n for op, n in self.calls.items() if face is None or op.startswith(face + " "))
        return total / max(1, self.onboardings)


def _main_thread_cpu() -> float:
    """CPU of the thread running the local host's event loop (the stand-ins run on other threads)."""
    assert threading.current_thread() is threading.main_thread()
    return time.thread_time()


async def run_pipeline(
    requests: list[OnboardingRequest],
    *,
    knobs: Knobs,
    seed: TenantSeed | None = None,
    settings: dict[str, str] | None = None,
    within_seconds: float = 300,
    apart: bool = False,
    warm: bool = False,
) -> PipelineRun:
    """The local host on this process's main thread; the stand-ins on threads of this process, or,
    `apart`, in a process of their own (as in Azure, where Microsoft's side uses none of the app's CPU).

    `warm`: timed from the submit on a host that has already handled one request (its services built,
    its receivers attached), as a deployed app is when upstream sends; untimed and uncounted."""
    with StandIns(knobs, seed, settings) if apart else _in_process(knobs, seed, settings) as stand_ins:
        async with ServiceBusClient.from_connection_string(stand_ins.environment[SERVICEBUS_CONNECTION]) as client:
            started, cpu = time.perf_counter(), _main_thread_cpu()
            async with running_host(stand_ins.environment):
                if warm:
                    (warm_up,) = requests_for(requests[0].group.smtp_address or "", 1, "warm-up")
                    await collect_outcomes(client, OUTCOMES, await submit(client, [warm_up]), within_seconds=60)
                    stand_ins.clear_log()
                    started, cpu = time.perf_counter(), _main_thread_cpu()
                ids = await submit(client, requests)
                outcomes = await collect_outcomes(client, OUTCOMES, ids, within_seconds=within_seconds)
                seconds, cpu = time.perf_counter() - started, _main_thread_cpu() - cpu
        log = stand_ins.request_log()
    calls = Counter(f"{e.face} {e.operation}" for e in log if e.status != 429)
    throttled = sum(1 for e in log if e.status == 429)
    dead = Counter(str(o.reason) for o in outcomes.values() if o.status not in SUCCEEDED)
    dead["(no outcome)"] += len(requests) - len(outcomes)
    succeeded = sum(1 for o in outcomes.values() if o.status in SUCCEEDED)
    return PipelineRun(len(requests), succeeded, seconds, cpu, calls, throttled, +dead)


Logged = list[LoggedRequest]  # every call the sandbox answered: face, operation, status, seconds


@dataclass
class _Running:
    environment: dict[str, str]
    request_log: Callable[[], Logged]
    clear_log: Callable[[], None]


@contextmanager
def _in_process(knobs: Knobs, seed: TenantSeed | None, settings: dict[str, str] | None) -> Iterator[_Running]:
    with local_stack(seed=seed, sandbox_knobs=knobs, settings=settings) as stack:
        stack.sandbox.request_log.clear()
        yield _Running(stack.environment, stack.sandbox.request_log.entries, lambda: _start_afresh(stack.sandbox))


def _start_afresh(sandbox: TenantSandbox) -> None:
    """Forget the calls so far and refill the tenant's buckets (a warm-up spends neither)."""
    sandbox.set_knobs()  # the same knobs again: full throttle buckets, as at the start
    sandbox.request_log.clear()


def _serve_stand_ins(connection: Connection, knobs: str, seed: str | None, settings: dict[str, str] | None) -> None:
    """The child process: the stand-ins until told to stop; meanwhile their request log on demand."""
    tenant = TenantSeed.model_validate_json(seed) if seed else None
    with local_stack(seed=tenant, sandbox_knobs=Knobs.model_validate_json(knobs), settings=settings) as stack:
        connection.send((stack.environment, _groups(stack.sandbox)))
        while (command := connection.recv()) != "stop":
            if command == "clear":
                _start_afresh(stack.sandbox)
                connection.send("cleared")
            else:
                connection.send(stack.sandbox.request_log.entries())
        connection.send("stopped")


class StandIns:
    """The emulator and the sandbox in a child process (spawned: no threads are forked)."""

    def __init__(self, knobs: Knobs, seed: TenantSeed | None = None, settings: dict[str, str] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        arguments = (child, knobs.model_dump_json(), seed.model_dump_json() if seed else None, settings)
        self._process = context.Process(target=_serve_stand_ins, args=arguments, daemon=True)

    def __enter__(self) -> _Running:
        self._process.start()
        self.environment, self.groups = self._connection.recv()
        return _Running(self.environment, self._log, self._clear)

    def _clear(self) -> None:
        self._connection.send("clear")
        self._connection.recv()

    def _log(self) -> Logged:
        self._connection.send("log")
        log: Logged = self._connection.recv()
        return log

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._connection.send("stop")
            self._connection.recv()
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


def _groups(sandbox: TenantSandbox) -> dict[str, tuple[str, str]]:
    """Each mail-enabled group's address -> (object id, kind), what the plain script looks up."""
    return {g.mail: (g.id, g.kind.value) for g in sandbox.directory.groups.values() if g.mail}


@dataclass
class ScriptRun:
    onboardings: int
    seconds: float
    cpu_seconds: float
    calls: int

    @property
    def rate(self) -> float:
        return self.onboardings / self.seconds


async def run_script(
    environment: dict[str, str], groups: dict[str, tuple[str, str]], requests: list[OnboardingRequest]
) -> ScriptRun:
    """The plain script: the fewest calls, one request after another, no checks, no retries."""
    credential = sandbox_app_credential(environment)
    graph = MsGraphDirectory(credential, base_url=environment["ONBOARDING_GRAPH_BASE_URL"])
    exchange = ExchangeOnlineClient(
        credential,
        tenant_id=environment["ONBOARDING_TENANT_ID"],
        base_url=environment["ONBOARDING_EXCHANGE_BASE_URL"],
    )
    started, cpu, calls = time.perf_counter(), time.thread_time(), 0
    try:
        for request in requests:
            address, mail = str(request.external_email), str(request.group.smtp_address)
            group_id, kind = groups[mail]
            if kind == "Microsoft365":
                guest = await graph.invite_guest(address, request.required_display_name, "https://myapps.microsoft.com")
                await graph.add_group_member(group_id, guest.id)
            else:
                contact = await exchange.new_mail_contact(
                    name=request.required_display_name,
                    external_email_address=address,
                    display_name=request.required_display_name,
                )
                await exchange.add_distribution_group_member(mail, contact.identity)
            calls += 2
        return ScriptRun(len(requests), time.perf_counter() - started, time.thread_time() - cpu, calls)
    finally:
        await graph.close()
        await exchange.close()


def script_on_fresh_sandbox(knobs: Knobs, requests: list[OnboardingRequest], *, apart: bool = False) -> ScriptRun:
    if apart:
        stand_ins = StandIns(knobs)
        with stand_ins:
            return asyncio.run(run_script(stand_ins.environment, stand_ins.groups, requests))
    with TenantSandbox(TenantSeed.demo(), knobs=knobs) as sandbox:
        environment = {
            "ONBOARDING_TENANT_ID": sandbox.tenant_id,
            "ONBOARDING_GRAPH_BASE_URL": sandbox.graph_base_url,
            "ONBOARDING_EXCHANGE_BASE_URL": sandbox.exchange_base_url,
            # The script runs as the app, with the app's rights, as the pipeline does.
            "ONBOARDING_MANAGED_IDENTITY_CLIENT_ID": grant_local_app(sandbox),
        }
        return asyncio.run(run_script(environment, _groups(sandbox), requests))


def run(coroutine: Coroutine[Any, Any, PipelineRun]) -> PipelineRun:
    return asyncio.run(coroutine)


# --- the rows ----------------------------------------------------------------------------------


def throughput_rows(sizes: list[int], knobs: Knobs, *, apart: bool = False) -> dict[int, PipelineRun]:
    where = "in a process of their own" if apart else "in the host's process"
    print(f"  the stand-ins {where}; timed from the submit on a running host that has handled one request:")
    script = script_on_fresh_sandbox(knobs, requests_for(GROUPS["distribution"], 30, "script"), apart=apart)
    print(
        f"  plain sequential script: {script.rate:.1f} onboardings/s ({script.calls / script.onboardings:.0f} calls "
        f"each, {1000 * script.cpu_seconds / script.onboardings:.1f} ms client CPU each; 30 requests)"
    )
    runs: dict[int, PipelineRun] = {}
    for size in sizes:
        requests = requests_for(GROUPS["distribution"], size, f"t{size}")
        result = run(run_pipeline(requests, knobs=knobs, apart=apart, warm=True))
        runs[size] = result
        print(
            f"  pipeline, {size} requests: {result.rate:.1f} onboardings/s = {result.rate / script.rate:.2f}x the "
            f"script (goal >= 5x); {result.succeeded}/{size} succeeded; host CPU "
            f"{1000 * result.host_cpu_seconds / size:.0f} ms each = "
            f"{result.host_cpu_seconds / size / (script.cpu_seconds / script.onboardings):.1f}x the script's "
            "client CPU (goal <= 40 ms)"
        )
    if len(runs) > 1:
        first, last = runs[sizes[0]], runs[sizes[-1]]
        print(f"  flatness: rate at {sizes[-1]} / rate at {sizes[0]} = {last.rate / first.rate:.2f} (goal ~1.0)")
    return runs


def calls_rows(knobs: Knobs) -> None:
    for kind, group in GROUPS.items():
        requests = requests_for(group, 24, f"c{kind[:3]}")
        cached = run(run_pipeline(requests, knobs=knobs))
        uncached = run(run_pipeline(requests, knobs=knobs, settings={"ONBOARDING_DIRECTORY_CACHE_SECONDS": "0"}))
        welcomed = run(run_pipeline(requests, knobs=knobs, settings=WELCOME_SETTINGS))
        print(
            f"  {kind}: {cached.calls_per_onboarding():.1f} calls per onboarding (cache off, same code: "
            f"{uncached.calls_per_onboarding():.1f}; lower bound, the plain script: 2; goal <= {GOALS[kind]}); "
            f"{cached.succeeded}/{cached.onboardings} succeeded"
        )
        for label, result in (("", cached), ("with the welcome message: ", welcomed)):
            faces = ", ".join(f"{result.calls_per_onboarding(face):.2f} {face}" for face in ("graph", "exchange"))
            busiest = ", ".join(f"{op} {n / result.onboardings:.2f}" for op, n in result.calls.most_common())
            print(f"      {label}{faces}: {busiest}")


def large_group_row(members: int, knobs: Knobs) -> None:
    seed = TenantSeed.demo().with_staff_in(GROUPS["distribution"], members)
    result = run(run_pipeline(requests_for(GROUPS["distribution"], 5, "big"), knobs=knobs, seed=seed))
    baseline = asyncio.run(_list_whole_group(seed))
    print(
        f"  {members:,}-member distribution group: {result.succeeded}/5 succeeded, "
        f"{result.calls_per_onboarding():.1f} calls per onboarding; baseline, listing the membership as verify "
        f"did before: {baseline}"
    )


def large_microsoft_365_group_row(subscribers: int, knobs: Knobs, burst: int = 60) -> None:
    """A burst of guests into a Microsoft 365 group with `subscribers` already, beside the same burst into
    the demo's small group in the same run: Get-UnifiedGroupLinks has no filter, so each subscription check
    reads the whole list (a page per 1,000), and the checks of one group share their reads."""
    group = GROUPS["Microsoft 365"]
    seed = TenantSeed.demo().with_staff_in(group, subscribers, subscribed=True)
    small = run(run_pipeline(requests_for(group, burst, "m365-small"), knobs=knobs, warm=True))
    large = run(run_pipeline(requests_for(group, burst, "m365-large"), knobs=knobs, seed=seed, warm=True))

    def pages(result: PipelineRun) -> float:
        return result.calls["exchange Get-UnifiedGroupLinks"] / max(1, result.onboardings)

    def cpu_ms(result: PipelineRun) -> float:
        return 1000 * result.host_cpu_seconds / max(1, result.onboardings)

    print(
        f"  {subscribers:,}-subscriber Microsoft 365 group, a burst of {burst} guests: {large.succeeded}/{burst} "
        f"succeeded; Get-UnifiedGroupLinks {pages(large):.2f} pages per onboarding (one read of the whole list: "
        f"{math.ceil((subscribers + burst) / 1000)} pages); host CPU {cpu_ms(large):.0f} ms per onboarding = "
        f"{cpu_ms(large) / cpu_ms(small):.2f}x the small group's {cpu_ms(small):.0f} ms (pages "
        f"{pages(small):.2f}); {large.calls_per_onboarding('exchange'):.2f} Exchange calls per onboarding = "
        f"{large.calls_per_onboarding('exchange') / small.calls_per_onboarding('exchange'):.2f}x"
    )


async def _list_whole_group(seed: TenantSeed) -> str:
    with TenantSandbox(seed) as sandbox:
        grant_local_app(sandbox)
        exchange = ExchangeOnlineClient(
            app_credential(sandbox),
            tenant_id=sandbox.tenant_id,
            base_url=sandbox.exchange_base_url,
        )
        try:
            await exchange.list_distribution_group_members(GROUPS["distribution"])
            outcome = "read it all"
        except DirectoryError as error:
            outcome = f"gave up ({type(error).__name__})"
        finally:
            await exchange.close()
        return f"{len(sandbox.request_log)} calls for one check, {outcome}"


# What the first invocation imports beyond function_app (functions/invoke.py defers it to then).
FIRST_MESSAGE = "import function_app; from shared import bootstrap, stages; import shared.directory.graph"
# What no app on this platform avoids: the worker's library and the Service Bus binding extension.
PLATFORM = "import azure.functions, azurefunctions.extensions.bindings.servicebus"
# The deployed package set on the deployed Python (make worker-venv builds it from requirements.txt).
DEPLOYED_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "worker" / "bin" / "python"


def cold_start_row() -> None:
    app_environment = {**os.environ, **OFFLINE_APP_SETTINGS}  # importing the app checks its settings
    interpreters = {"dev venv, Python 3.13": sys.executable}
    if DEPLOYED_PYTHON.exists():
        interpreters["requirements.txt only, Python 3.13 (as deployed)"] = str(DEPLOYED_PYTHON)
    for label, python in interpreters.items():

        def child(code: str, python: str = python) -> tuple[float, float]:
            # Peak RSS from VmHWM: getrusage's ru_maxrss survives exec, so a child would report this
            # benchmark's own peak (/proc/PID/status in proc(5)).
            measure = (
                "import re, time; t = time.perf_counter(); " + code + "; "
                "print(time.perf_counter() - t, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
            )
            # Our own interpreters on code written above: no outside input reaches the command line.
            runs = [
                subprocess.run(  # noqa: S603
                    [python, "-c", measure], capture_output=True, text=True, check=True, env=app_environment
                )
                for _ in range(5)
            ]
            samples = sorted((float(r.stdout.split()[0]), float(r.stdout.split()[1]) / 1024) for r in runs)
            return samples[2]  # the median by time

        bare = child("from msgraph import GraphServiceClient")
        platform = child(PLATFORM)
        app = child("import function_app")
        first = child(FIRST_MESSAGE)
        print(f"  {label}:")
        print(
            f"    import function_app: {app[0]:.2f} s, {app[1]:.0f} MiB = {app[0] / bare[0]:.2f}x a bare "
            f"`from msgraph import GraphServiceClient` ({bare[0]:.2f} s, {bare[1]:.0f} MiB) (goal <= 1.5x, <= 80 MiB)"
        )
        print(
            f"    of which the platform (azure-functions + the Service Bus extension, before any app code): "
            f"{platform[0]:.2f} s, {platform[1]:.0f} MiB = {platform[0] / bare[0]:.2f}x"
        )
        print(
            f"    first message (the import, then what the first invocation loads): {first[0]:.2f} s, "
            f"{first[1]:.0f} MiB = {first[0] / app[0]:.2f}x the import (goal <= 2x)"
        )


def throttled_row(requests: int, rate: float, knobs: Knobs) -> None:
    throttle = {face: Throttle(requests_per_second=rate, burst=max(1, int(rate))) for face in ("graph", "exchange")}
    result = run(
        run_pipeline(
            requests_for(GROUPS["distribution"], requests, "thr"),
            knobs=knobs.model_copy(update={"throttle": throttle}),
            within_seconds=900,
        )
    )
    # The ceiling for the calls this very run needed per onboarding (answered ones; a 429 costs no token).
    per_face = {face: result.calls_per_onboarding(face) for face in ("graph", "exchange")}
    ceiling = min(rate / n for n in per_face.values() if n > 0)
    print(
        f"  {requests} requests, {rate:g} requests/s per face: {result.rate:.2f} onboardings/s = "
        f"{100 * result.rate / ceiling:.0f}% of the ceiling {ceiling:.2f}/s the throttle allows for "
        f"{', '.join(f'{n:.2f} {face}' for face, n in per_face.items())} calls per onboarding (goal >= 90%); "
        f"429s: {result.throttled}; not succeeded: {dict(result.dead_lettered) or 'none'}"
    )


def throttled_rows(sizes: list[int], rate: float, knobs: Knobs) -> None:
    for requests in sizes:
        throttled_row(requests, rate, knobs)


def section(title: str, body: Callable[[], Any]) -> Any:
    print(title)
    started = time.perf_counter()
    value = body()
    print(f"  ({time.perf_counter() - started:.0f} s)")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 300])
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--throttle", type=float, default=20, help="requests/s per face for the goodput row")
    parser.add_argument("--throttled-requests", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--large-group", type=int, default=20_000)
    parser.add_argument("--large-microsoft-365-group", type=int, default=5_000, help="its subscribers")
    arguments = parser.parse_args()
    knobs = Knobs(latency_ms=arguments.latency_ms)
    print(
        f"Pipeline vs plain script, sandbox latency {arguments.latency_ms:g} ms per call (ratios; see docs/performance.md)"
    )
    section("Cold start", cold_start_row)
    section("End-to-end onboardings/s (distribution group)", lambda: throughput_rows(arguments.sizes, knobs))
    section(
        "End-to-end onboardings/s, Microsoft's side on other CPU (distribution group)",
        lambda: throughput_rows(arguments.sizes, knobs, apart=True),
    )
    section("Directory calls per onboarding (24 requests each)", lambda: calls_rows(knobs))
    section("A large distribution group", lambda: large_group_row(arguments.large_group, knobs))
    section(
        "A large Microsoft 365 group (subscription checks)",
        lambda: large_microsoft_365_group_row(arguments.large_microsoft_365_group, knobs),
    )
    section(
        "Goodput under throttling (steady state; the first and last seconds, start-up and the tail, count too)",
        lambda: throttled_rows(arguments.throttled_requests, arguments.throttle, knobs),
    )


if __name__ == "__main__":
    main()
