"""`Sandbox.invoke_now`: a reused function's short requests on the caller's thread
(the gateway's event loop), and everything that sends a request to a thread instead."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from kv_memory import MemoryBackend

import attacks
from edgefn_platform import BuildResult, build
from edgefn_platform.gateway import GatewayConfig
from edgefn_platform.gateway.policy import ConfigError
from edgefn_runtime import Engine, Limits, Request, Sandbox, Timeout
from edgefn_runtime import _inline as inline
from edgefn_runtime.capabilities import installed
from gateway_process import GatewayProcess, deploy_as

AREA = "A reused function on the gateway's event loop (tests/test_inline.py)"
LIMITS = Limits(timeout=1.0)
STATE = Path(__file__).resolve().parent / "functions" / "state"
COUNTER = Request("GET", "/counter")
ON = 0.001  # EDGEFN_INLINE_CPU_MS=1


def counter(outcome: object) -> int:
    assert outcome is not None, "the request was not run on this thread"
    return int(json.loads(outcome.response.body)["counter"])  # type: ignore[attr-defined]


@pytest.fixture
def reused(engine: Engine, hostile_build: BuildResult, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The hostile fixture, reused, on a gateway that runs short requests on its loop."""
    monkeypatch.setattr(engine, "inline_cpu", ON)
    manifest = hostile_build.manifest
    return engine.load(hostile_build.path, env=manifest.env, reuse=1000)


def test_a_ready_instance_serves_on_this_thread(reused: Sandbox) -> None:
    assert reused.invoke_now(COUNTER, LIMITS) is None  # none instantiated yet
    assert counter(reused.invoke(COUNTER, LIMITS)) == 1
    # The same instance, its globals and all, as on a thread.
    assert [counter(reused.invoke_now(COUNTER, LIMITS)) for _ in range(3)] == [2, 3, 4]
    assert counter(reused.invoke(COUNTER, LIMITS)) == 5


def test_a_fresh_instance_function_never_runs_here(
    engine: Engine, hostile_build: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "inline_cpu", ON)
    fresh = engine.load(hostile_build.path, env=hostile_build.manifest.env)
    fresh.invoke(COUNTER, LIMITS)
    assert fresh.invoke_now(COUNTER, LIMITS) is None


def test_a_large_body_goes_to_a_thread(reused: Sandbox) -> None:
    reused.invoke(COUNTER, LIMITS)
    large = Request("POST", "/echo", body=b"x" * (inline.MAX_BODY + 1))
    assert reused.invoke_now(large, LIMITS) is None
    small = Request("POST", "/echo", body=b"x" * inline.MAX_BODY)
    outcome = reused.invoke_now(small, LIMITS)
    assert outcome is not None and outcome.response.body == small.body
    # One over the function's own limit is for `invoke` to refuse.
    assert reused.invoke_now(small, Limits(timeout=1.0, max_body=1024)) is None


def test_a_guest_past_the_loop_bound_is_stopped_and_run_again_elsewhere(
    reused: Sandbox,
) -> None:
    reused.invoke(COUNTER, LIMITS)
    started = time.monotonic()
    assert reused.invoke_now(Request("GET", "/loop"), LIMITS) is None
    held = time.monotonic() - started
    # Stopped at the second epoch tick, not at its 1 s timeout.
    assert held < 0.5
    # Thrown away with its globals, and its function sent to threads.
    assert reused.idle == 0
    assert counter(reused.invoke(COUNTER, LIMITS)) == 1
    assert reused.invoke_now(COUNTER, LIMITS) is None
    # On a thread it has its whole timeout.
    slow = reused.invoke(Request("GET", "/sleep", "seconds=0.2"), LIMITS)
    assert slow.response.body == b"woke up\n"
    attacks.record(
        AREA,
        "a fast reused function turns into an endless loop, to hold the event loop "
        "(and every other connection of the worker)",
        f"stopped after {held * 1000:.0f} ms on the loop; its instance thrown away, its "
        "requests sent to threads for 30 s, where each has its whole timeout",
    )


def test_a_timeout_within_the_loop_bound_is_the_requests_own(reused: Sandbox) -> None:
    reused.invoke(COUNTER, LIMITS)
    with pytest.raises(Timeout):
        reused.invoke_now(Request("GET", "/loop"), Limits(timeout=0.01))


def test_a_blocking_sleep_is_stopped_too(reused: Sandbox) -> None:
    reused.invoke(COUNTER, LIMITS)
    started = time.monotonic()
    assert reused.invoke_now(Request("GET", "/sleep", "seconds=0.9"), LIMITS) is None
    held = time.monotonic() - started
    assert held < 0.5
    attacks.record(
        AREA,
        "`time.sleep(0.9)` on the event loop (the SDK's: waits in the host, 10 ms each)",
        f"stopped after {held * 1000:.0f} ms, run again on a thread",
    )


def test_a_wait_in_wasi_is_stopped_too(reused: Sandbox) -> None:
    # The epoch deadline does not fire while wasmtime waits in a WASI call: the
    # adapter in front of `wasi:io/poll` stops the guest before it waits.
    reused.invoke(COUNTER, LIMITS)
    started = time.monotonic()
    assert reused.invoke_now(Request("GET", "/host-sleep", "seconds=0.5"), LIMITS) is None
    held = time.monotonic() - started
    assert held < 0.1
    reused.invoke(COUNTER, LIMITS)
    assert reused.invoke_now(COUNTER, LIMITS) is None  # then on threads for a while
    # On a thread the same wait is waited out.
    slept = reused.invoke(Request("GET", "/host-sleep", "seconds=0.2"), LIMITS)
    assert slept.response.body == b"woke up\n"
    attacks.record(
        AREA,
        "one long wait in WASI on the event loop (`wasi:io/poll` on a clock, past the "
        "SDK's 10 ms sleep slices), to hold the loop past the epoch deadline",
        f"stopped after {held * 1000:.1f} ms, before waiting; run again on a thread, its "
        "function on threads for 30 s",
    )


def test_a_component_whose_waits_are_not_bounded_never_runs_here(
    engine: Engine, hostile_build: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "inline_cpu", ON)
    loaded = engine.load(hostile_build.path, env=hostile_build.manifest.env, reuse=10)
    # As `Engine.load` makes it for a component `_wait_guard` could not change.
    unbounded = Sandbox(
        engine, loaded.component, sha256=loaded.sha256, env=loaded.env, assets=None, reuse=10
    )
    unbounded.invoke(COUNTER, LIMITS)
    assert unbounded.invoke_now(COUNTER, LIMITS) is None
    loaded.invoke(COUNTER, LIMITS)
    assert loaded.invoke_now(COUNTER, LIMITS) is not None


@pytest.fixture(scope="module")
def state_engine() -> Iterator[tuple[Engine, MemoryBackend, BuildResult]]:
    backend = MemoryBackend()
    source = installed(kv=backend, secrets=lambda function, name: "value")
    with Engine(capabilities=source, inline_cpu=ON) as engine:
        yield engine, backend, build(STATE)


@pytest.mark.parametrize("path", ["/incr/hits", "/secret/ORIGIN_TOKEN"])
def test_a_host_call_stops_the_guest_before_the_host_acts(
    state_engine: tuple[Engine, MemoryBackend, BuildResult], path: str
) -> None:
    engine, backend, result = state_engine
    sandbox = engine.load(result.path, grants=result.manifest.grants(), reuse=1000)
    sandbox.invoke(Request("GET", "/get/other"), LIMITS)  # an instance, ready
    backend.data.clear()
    backend.calls.clear()
    assert sandbox.invoke_now(Request("GET", path), LIMITS) is None
    assert backend.calls == [] and backend.data == {}
    # Run again on a thread, it does what it asked for, once.
    outcome = sandbox.invoke(Request("GET", path), LIMITS)
    assert outcome.response.status == 200
    if path.startswith("/incr"):
        assert json.loads(outcome.response.body)["value"] == 1
        assert len(backend.calls) == 1
    # Its requests go to threads for a while.
    assert sandbox.invoke_now(Request("GET", "/get/other"), LIMITS) is None
    attacks.record(
        AREA,
        f"a host call from the event loop ({path}), which could wait on I/O there",
        "the guest stopped before the host did anything (no backend call); run again on a "
        "thread, the call happened once",
    )


def test_a_function_that_turns_slow_goes_to_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(inline.time, "monotonic", lambda: clock[0])
    gate = inline.InlineGate(ON)
    for _ in range(20):
        gate.spent(0.0002, 0.0002)
    assert gate.open()
    gate.spent(0.004, 0.004)  # one slow request among fast ones
    assert gate.open()
    for _ in range(5):
        gate.spent(0.002)  # slow on threads too
    assert not gate.open()
    while not gate.open():  # fast again: back to the loop
        gate.spent(0.0002)
    gate.spent(0.0001, inline.LONG * 1.1)  # it held the loop, waiting
    for _ in range(50):
        gate.spent(0.0002)
    assert not gate.open()  # fast on average, but not back on the loop yet
    clock[0] += inline.COOLDOWN
    assert gate.open()


def test_it_is_on_unless_turned_off(hostile_build: BuildResult) -> None:
    with Engine() as default, Engine(inline_cpu=0) as off:
        assert default.inline_cpu == inline.DEFAULT_CPU
        for engine, served_here in ((default, True), (off, False)):
            sandbox = engine.load(hostile_build.path, env=hostile_build.manifest.env, reuse=10)
            sandbox.invoke(COUNTER, LIMITS)
            assert (sandbox.invoke_now(COUNTER, LIMITS) is not None) is served_here


@pytest.mark.parametrize(
    ("value", "seconds"), [("", 0.001), ("0", 0.0), ("1", 0.001), ("2.5", 0.0025)]
)
def test_the_setting(monkeypatch: pytest.MonkeyPatch, value: str, seconds: float) -> None:
    monkeypatch.setenv("EDGEFN_INLINE_CPU_MS", value)
    assert inline.inline_cpu_setting() == seconds


@pytest.mark.parametrize("value", ["fast", "-1", "11"])
def test_a_bad_setting_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EDGEFN_INLINE_CPU_MS", value)
    with pytest.raises(
        ValueError, match="EDGEFN_INLINE_CPU_MS must be a number of ms from 0 to 10"
    ):
        inline.inline_cpu_setting()


@pytest.mark.parametrize(
    ("variable", "value"), [("EDGEFN_INLINE_CPU_MS", "fast"), ("EDGEFN_AHEAD_INSTANCES", "-3")]
)
def test_a_bad_variable_stops_the_gateway_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # In `serve`'s process, not in each worker, which would die and be restarted.
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable} must be"):
        GatewayConfig(data_dir=tmp_path).load()


def test_through_a_gateway_every_request_is_served_once(tmp_path: Path) -> None:
    # Each increment is a host call: on the loop it is stopped before the store
    # is asked, and the request is served on a thread, exactly once. (On the loop
    # is the default.)
    with GatewayProcess(tmp_path / "data", workers=2) as gateway:
        deploy_as(gateway, STATE, "state")
        gateway.wait_serving("state")
        url = f"{gateway.public_url}/state"
        with httpx.Client(timeout=30) as client:
            values = [client.get(f"{url}/incr/one").json()["value"] for _ in range(30)]
            assert values == list(range(1, 31))
            # No host call: these may stay on the loop.
            assert {client.get(f"{url}/nothing-here").status_code for _ in range(30)} == {404}
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda _: httpx.get(f"{url}/incr/many", timeout=30), range(60)))
        assert sorted(answer.json()["value"] for answer in answers) == list(range(1, 61))
