"""Key-value stores and secrets from a function: the host capabilities through
`Engine`/`Sandbox` with an in-memory backend (tests/kv_memory.py), the SDK's
argument checks, and `edgefn.testing`'s in-memory stores and secrets.

The gateway's own backends are tested in test_kv_store.py, end to end in
test_kv_gateway.py."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kv_memory import MemoryBackend

import attacks
from edgefn import kv, secrets
from edgefn.testing import MemoryKV, TestClient, load_app
from edgefn_contract.kv import STATUSES
from edgefn_platform import BuildResult, build
from edgefn_platform.gateway import Deployer
from edgefn_platform.gateway._deploy import _sandbox_key
from edgefn_platform.kv import open_key_value
from edgefn_platform.manifest import Manifest
from edgefn_platform.registry import VersionRecord, open_registry
from edgefn_runtime import (
    WARM_UP_HEADER,
    Engine,
    FuelExhausted,
    GuestError,
    Limits,
    Outcome,
    Sandbox,
    Timeout,
)
from edgefn_runtime import Request as SandboxRequest
from edgefn_runtime.capabilities import installed
from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota

AREA = "Key-value stores and secrets from a function (tests/test_kv_guest.py)"
SECRET = "s3cr3t-Value-that-must-not-leak"
STATE = Path(__file__).resolve().parent / "functions" / "state"


@pytest.fixture(scope="module")
def state_build() -> BuildResult:
    return build(STATE)


@pytest.fixture(scope="module")
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture(scope="module")
def state(state_build: BuildResult, backend: MemoryBackend) -> Iterator[Sandbox]:
    """The state function, its stores in `backend`, ORIGIN_TOKEN set to SECRET."""

    def source(function: str, name: str) -> str | None:
        return SECRET if (function, name) == ("state", "ORIGIN_TOKEN") else None

    with Engine(capabilities=installed(kv=backend, secrets=source)) as engine:
        yield engine.load(state_build.path, grants=state_build.manifest.grants(), reuse=1000)


@pytest.fixture(autouse=True)
def _empty(request: pytest.FixtureRequest) -> None:
    if "backend" in request.fixturenames:
        backend: MemoryBackend = request.getfixturevalue("backend")
        backend.data.clear()
        backend.calls.clear()
        backend.delay = 0.0


def call(
    sandbox: Sandbox, path: str, query: str = "", body: bytes | None = None, **limits: Any
) -> Outcome:
    method = "GET" if body is None else "POST"
    request = SandboxRequest(method, path, query, body=body or b"")
    return sandbox.invoke(request, replace(Limits(), **limits))


def answer(outcome: Outcome) -> Any:
    return json.loads(outcome.response.body)


def error(outcome: Outcome) -> tuple[int, str, str]:
    body = answer(outcome)["error"]
    return outcome.response.status, body["code"], body["message"]


# Every operation ------------------------------------------------------------


@pytest.mark.wasm
def test_every_operation_round_trips_through_the_sandbox(
    state: Sandbox, backend: MemoryBackend
) -> None:
    assert answer(call(state, "/incr/n")) == {"value": 1}
    assert answer(call(state, "/incr/n", "by=41")) == {"value": 42}
    assert answer(call(state, "/incr/n", "by=-2")) == {"value": 40}
    assert answer(call(state, "/set/greeting", body=b"hello")) == {"set": 5}
    assert answer(call(state, "/get/greeting")) == {"value": "hello", "length": 5}
    assert answer(call(state, "/get/absent")) == {"value": None}
    assert answer(call(state, "/exists/greeting")) == {"exists": True}
    assert answer(call(state, "/exists/absent")) == {"exists": False}
    assert answer(call(state, "/set/user:2", body=b"b")) == {"set": 1}
    assert answer(call(state, "/set/user:1", body=b"a")) == {"set": 1}
    assert answer(call(state, "/keys", "prefix=user:")) == {"keys": ["user:1", "user:2"]}
    assert answer(call(state, "/keys", "limit=2")) == {"keys": ["greeting", "n"]}
    assert answer(call(state, "/delete/greeting")) == {"deleted": True}
    assert answer(call(state, "/exists/greeting")) == {"exists": False}
    # An empty value is a value, not an absent key.
    assert answer(call(state, "/set/empty", body=b"")) == {"set": 0}
    assert answer(call(state, "/get/empty")) == {"value": "", "length": 0}
    # The other declared store is another namespace; all of it is the function's own.
    assert answer(call(state, "/get/n", "store=other")) == {"value": None}
    assert set(backend.data) == {("state", "default"), ("state", "other")}


@pytest.mark.wasm
def test_a_one_mib_value_round_trips_byte_for_byte(state: Sandbox) -> None:
    outcome = call(state, "/fill/big", f"size={1024 * 1024}")
    assert answer(outcome) == {"size": 1024 * 1024, "same": True}
    # Nothing of the value leaked into the response body (it crossed on stdout).
    raw = call(state, "/get/big", "raw=1")
    assert raw.response.body == (bytes(range(256)) * 4096)


@pytest.mark.wasm
def test_a_set_between_streamed_chunks_keeps_its_value_out_of_the_body(state: Sandbox) -> None:
    # Both cross on stdout; each chunk is taken from there as it is sent.
    assert call(state, "/stream").response.body == b"first second"
    assert answer(call(state, "/get/during")) == {"value": "in the body?", "length": 12}


@pytest.mark.wasm
def test_ttl_and_incr_windows(state: Sandbox, backend: MemoryBackend) -> None:
    call(state, "/set/short", "ttl=0.05", body=b"x")
    assert answer(call(state, "/incr/window", "ttl=0.05")) == {"value": 1}
    assert answer(call(state, "/get/short")) == {"value": "x", "length": 1}
    deadline = time.monotonic() + 5
    while answer(call(state, "/exists/window"))["exists"]:  # poll, not a fixed wait
        assert time.monotonic() < deadline, "the key never expired"
    assert answer(call(state, "/get/short")) == {"value": None}  # set before it
    assert answer(call(state, "/incr/window", "ttl=0.05")) == {"value": 1}


@pytest.mark.wasm
def test_usage_counts_operations_time_and_outcomes(state: Sandbox) -> None:
    outcome = call(state, "/get/absent")
    assert outcome.usage.kv_ops == 2
    assert outcome.usage.kv_outcomes == {("open", "ok"): 1, ("get", "miss"): 1}
    assert outcome.usage.kv_seconds > 0
    outcome = call(state, "/incr/n", "store=nope")
    assert outcome.usage.kv_outcomes == {("open", "not_declared"): 1}


# Refusals, each with its message -------------------------------------------


@pytest.mark.wasm
def test_an_undeclared_store_is_refused_and_says_how_to_declare_it(
    state: Sandbox, backend: MemoryBackend
) -> None:
    status, code, message = error(call(state, "/incr/n", "store=secret-of-another"))
    assert (status, code) == (500, "kv_store_not_declared")
    assert "'default', 'other'" in message
    assert 'key_value_stores = ["secret-of-another"]' in message
    assert backend.calls == []
    caught = answer(call(state, "/caught", "store=nope"))
    assert caught == {"type": "StoreNotDeclared", "status": 500, "code": "kv_store_not_declared"}
    attacks.record(
        AREA,
        "open a key-value store the manifest does not declare (another function's name)",
        "500 `kv_store_not_declared` before the backend is asked; stores are per function",
    )


@pytest.mark.wasm
def test_a_value_over_max_kv_value_is_refused_with_the_limit_and_how_to_raise_it(
    state: Sandbox, backend: MemoryBackend
) -> None:
    status, code, message = error(call(state, "/set/k", body=b"x" * 1001, max_kv_value=1000))
    assert (status, code) == (500, "kv_value_too_large")
    assert "1,001 bytes" in message and "1,000 bytes" in message
    assert "[limits] max_kv_value" in message and "edgefn limits state --max-kv-value" in message
    assert backend.calls == []
    # The refused value was taken off stdout: the next request's body is its own.
    assert answer(call(state, "/set/k", body=b"x" * 1000, max_kv_value=1000)) == {"set": 1000}


@pytest.mark.wasm
def test_max_kv_ops_bounds_the_operations_of_one_request(
    state: Sandbox, backend: MemoryBackend
) -> None:
    status, code, message = error(call(state, "/loop", "n=100", max_kv_ops=10))
    assert (status, code) == (507, "kv_quota_exceeded")
    assert "10 key-value operations" in message and "[limits] max_kv_ops" in message
    # open + 9 incr, then the 11th operation is refused: the backend saw 9.
    assert len(backend.calls) == 9
    assert backend.data[("state", "default")]["loop"][0] == b"9"
    attacks.record(
        AREA,
        "a loop of key-value operations in one request",
        "507 `kv_quota_exceeded` at the request's `max_kv_ops` (1000 by default)",
    )


@pytest.mark.wasm
def test_store_quota_reaches_the_backend(state: Sandbox) -> None:
    status, code, _ = error(call(state, "/set/k", body=b"x" * 100, max_kv_store=50))
    assert (status, code) == (507, "kv_quota_exceeded")
    call(state, "/incr/a", max_kv_keys=1)
    status, code, _ = error(call(state, "/incr/b", max_kv_keys=1))
    assert (status, code) == (507, "kv_quota_exceeded")


@pytest.mark.wasm
def test_incr_on_a_non_integer_is_refused(state: Sandbox) -> None:
    call(state, "/set/word", body=b"hello")
    status, code, _ = error(call(state, "/incr/word"))
    assert (status, code) == (500, "kv_not_integer")


@pytest.mark.wasm
def test_every_failure_kind_reaches_the_function_as_its_exception() -> None:
    # The host's kinds and the SDK's classes are the same vocabulary.
    for kind, (status, code) in STATUSES.items():
        with pytest.raises(kv.KVError) as raised:
            kv.raise_failure(kind, "m")
        assert (raised.value.kind, raised.value.status, raised.value.code) == (kind, status, code)
    with pytest.raises(kv.KVUnavailable):
        kv.raise_failure("a kind from a newer host", "m")


# Fuel and time --------------------------------------------------------------


@pytest.mark.wasm
def test_operations_are_charged_fuel(state: Sandbox, backend: MemoryBackend) -> None:
    few = call(state, "/loop", "n=1").usage.fuel
    many = call(state, "/loop", "n=101").usage.fuel
    # 100 more operations cost at least their fixed host charge each.
    assert many - few >= 100 * 100_000
    # With fuel for 300 operations' host charge, the loop of 900 stops by then
    # (in a host call, "on key-value calls", or in the guest's own code between two).
    backend.calls.clear()
    with pytest.raises(FuelExhausted, match="used all of its fuel"):
        call(state, "/loop", "n=900", fuel=few + 300 * 100_000)
    assert 200 < len(backend.calls) <= 300
    attacks.record(
        AREA,
        "make the host work for free with cheap key-value calls",
        "each operation is charged fuel before the work (100,000 units and one a value byte)",
    )


@pytest.mark.wasm
def test_a_backend_that_blocks_past_the_deadline_is_a_timeout(
    state: Sandbox, backend: MemoryBackend
) -> None:
    backend.delay = 10.0
    started = time.monotonic()
    with pytest.raises(Timeout, match="key-value incr ran past"):
        call(state, "/incr/n", timeout=0.5)
    assert time.monotonic() - started < 3
    attacks.record(
        AREA,
        "a key-value store that does not answer (the request's wall clock waits in the host)",
        "504 `timeout` at the request's deadline: the backend is bounded by it",
    )


@pytest.mark.wasm
def test_no_backend_answers_unavailable(state_build: BuildResult) -> None:
    with Engine(capabilities=installed()) as engine:
        sandbox = engine.load(state_build.path, grants=state_build.manifest.grants())
        status, code, message = error(call(sandbox, "/incr/n"))
        # `get` answers result<option<u64>, failure>: its error crosses too
        # (wasmtime-py could not lower it before _wasmtime.fix_option_lowering).
        assert error(call(sandbox, "/get/k"))[:2] == (503, "kv_unavailable")
    assert (status, code) == (503, "kv_unavailable")
    assert "not available on this host" in message
    assert "`edgefn dev`" in message and "MemoryKV" in message  # what to do instead


@pytest.mark.wasm
def test_the_warm_up_request_changes_no_store(state: Sandbox, backend: MemoryBackend) -> None:
    """The gateway runs one throwaway request per load on every worker: a counter
    must not count it (as outbound HTTP refuses its fetches)."""
    request = SandboxRequest("GET", "/incr/n", headers=[(WARM_UP_HEADER, "1")])
    body = json.loads(state.invoke(request, Limits()).response.body)
    assert body["error"]["code"] == "kv_unavailable"
    assert "warm-up" in body["error"]["message"]
    assert backend.calls == []
    assert answer(call(state, "/incr/n")) == {"value": 1}


# Secrets ----------------------------------------------------------------------


@pytest.mark.wasm
def test_secrets_declared_set_unset_and_undeclared(
    state: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    outcome = call(state, "/secret/ORIGIN_TOKEN")
    assert answer(outcome) == {"value": SECRET}
    seen.append(outcome)
    assert answer(call(state, "/secret/UNSET")) == {"value": None}
    refused = call(state, "/secret/NOT_DECLARED")
    status, code, message = error(refused)
    assert (status, code) == (500, "secret_not_declared")
    assert 'secrets = ["NOT_DECLARED"]' in message
    seen.append(refused)
    # A bad name is refused in the guest, before the host is asked.
    with pytest.raises(GuestError, match="secret names are") as bad:
        call(state, "/secret/1bad")
    text = " ".join(
        [str(bad.value), *bad.value.logs, *(" ".join(o.logs) for o in seen)]
        + [refused.response.body.decode(), caplog.text]
    )
    assert SECRET not in text
    attacks.record(
        AREA,
        "read a secret the manifest does not declare",
        "500 `secret_not_declared`; declared values reach only the function, in no log or error",
    )


def test_secrets_never_sit_in_the_environment(state_build: BuildResult) -> None:
    assert "ORIGIN_TOKEN" not in state_build.manifest.env


# The SDK's argument checks ---------------------------------------------------


@pytest.mark.parametrize(
    ("call_it", "error_type", "match"),
    [
        (lambda: kv.open("Bad Name"), ValueError, "store names are"),
        (lambda: kv.open(3), TypeError, "store names are"),
        (lambda: kv.Store("default").get(""), ValueError, "cannot be empty"),
        (lambda: kv.Store("default").get(b"k"), TypeError, "keys are str"),
        (lambda: kv.Store("default").get("a\nb"), ValueError, "control characters"),
        (lambda: kv.Store("default").get("k" * 513), ValueError, "at most 512 bytes"),
        (lambda: kv.Store("default").set("k", 3), TypeError, "bytes or str"),
        (lambda: kv.Store("default").set("k", b"", ttl=0), ValueError, "positive"),
        (lambda: kv.Store("default").set("k", b"", ttl=float("inf")), ValueError, "finite"),
        (lambda: kv.Store("default").set("k", b"", ttl="1"), TypeError, "seconds"),
        (lambda: kv.Store("default").incr("k", by=True), TypeError, "int"),
        (lambda: kv.Store("default").incr("k", by=1.5), TypeError, "int"),
        (lambda: kv.Store("default").incr("k", by=2**63), ValueError, "64-bit"),
        (lambda: kv.Store("default").keys(limit=0), ValueError, "1 to 1000"),
        (lambda: kv.Store("default").keys(limit=1001), ValueError, "1 to 1000"),
        (lambda: kv.Store("default").keys(prefix=1), TypeError, "prefix"),
        (lambda: secrets.get("has space"), ValueError, "secret names"),
        (lambda: secrets.get(None), TypeError, "secret names"),
    ],
)
def test_the_sdk_checks_arguments_before_the_host(
    call_it: Any, error_type: type[Exception], match: str
) -> None:
    kv.use_backend(MemoryKV())
    secrets.use_backend(None)
    with pytest.raises(error_type, match=match):
        call_it()


def test_ttl_is_milliseconds_rounded_up() -> None:
    assert kv.ttl_ms(None) == 0
    assert kv.ttl_ms(0.0001) == 1
    assert kv.ttl_ms(1.0011) == 1002
    assert kv.ttl_ms(60) == 60_000


# edgefn.testing ----------------------------------------------------------------


def test_testclient_keeps_stores_in_memory_across_requests() -> None:
    app = load_app(STATE)
    memory = MemoryKV()
    memory.set("default", "greeting", b"hi")
    client = TestClient(app, kv=memory)
    assert client.get("/get/greeting").json() == {"value": "hi", "length": 2}
    assert client.get("/incr/n").json() == {"value": 1}
    assert client.get("/incr/n", headers={}).json() == {"value": 2}
    assert memory.items("default") == {"greeting": b"hi", "n": b"2"}
    assert client.get("/keys").json() == {"keys": ["greeting", "n"]}
    # Without kv=, each client has a fresh store of its own.
    assert TestClient(app).get("/incr/n").json() == {"value": 1}


def test_testclient_checks_declared_stores_and_secrets_as_the_host_does() -> None:
    app = load_app(STATE)
    client = TestClient(app, secrets={"ORIGIN_TOKEN": "t", "OTHER": "x"}, raise_exceptions=False)
    refused = client.get("/incr/n?store=nope")
    assert (refused.status, refused.json()["error"]["code"]) == (500, "kv_store_not_declared")
    assert client.get("/secret/ORIGIN_TOKEN").json() == {"value": "t"}
    assert client.get("/secret/UNSET").json() == {"value": None}
    # Given to the client but not declared: refused, as it would be deployed.
    refused = client.get("/secret/OTHER")
    assert (refused.status, refused.json()["error"]["code"]) == (500, "secret_not_declared")


def test_memorykv_expires_on_its_clock_and_keeps_incr_in_64_bits() -> None:
    now = [100.0]
    memory = MemoryKV(clock=lambda: now[0])
    memory.set("s", "k", b"v", ttl_ms=1500)
    assert memory.incr("s", "c", 1, ttl_ms=1000) == 1
    now[0] += 1.0
    assert memory.exists("s", "k") and memory.get("s", "c") is None
    now[0] += 0.5
    assert memory.get("s", "k") is None
    memory.set("s", "big", str(2**63 - 1))
    with pytest.raises(kv.NotAnInteger):
        memory.incr("s", "big")
    memory.set("s", "word", "hello")
    with pytest.raises(kv.NotAnInteger):
        memory.incr("s", "word")
    with pytest.raises(kv.ValueTooLarge, match="max_kv_value"):
        MemoryKV(max_value=3).set("s", "k", b"four")


@pytest.mark.wasm
def test_values_outlive_fresh_instances(
    state_build: BuildResult, state: Sandbox, backend: MemoryBackend
) -> None:
    # `state` links the engine to `backend`; this sandbox starts an instance per request.
    fresh = state.engine.load(state_build.path, grants=state_build.manifest.grants())
    assert answer(call(fresh, "/set/kept", body=b"across instances")) == {"set": 16}
    assert answer(call(fresh, "/get/kept")) == {"value": "across instances", "length": 16}
    assert answer(call(fresh, "/get/kept")) == {"value": "across instances", "length": 16}
    assert answer(call(fresh, "/incr/n")) == {"value": 1}
    assert answer(call(fresh, "/incr/n")) == {"value": 2}


def test_the_readme_kv_examples_run_as_written() -> None:
    # The handler of "Key-value stores" and the test of "Testing a function natively".
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    handler = re.search(r"```python\n(from edgefn import App, HTTPError, kv\n.*?)```", readme, re.S)
    test = re.search(r"```python\n(from edgefn.testing import MemoryKV.*?)```", readme, re.S)
    assert handler and test, "the README lost its key-value examples"
    namespace: dict[str, Any] = {}
    exec(handler[1] + test[1], namespace)
    namespace["test_rate_limit"]()
    assert TestClient(namespace["app"]).get("/hit").json() == {"hits": 1, "flag": False}


@pytest.mark.wasm
def test_every_operation_through_the_gateway_s_sqlite_store(
    state_build: BuildResult, tmp_path: Path
) -> None:
    # The same function over edgefn_platform.kv's SQLite backend: what the gateway links.
    open_registry(None, tmp_path).close()  # migrates the schema, kv tables included
    store = open_key_value(None, tmp_path)
    try:
        with Engine(capabilities=installed(kv=store)) as engine:
            sandbox = engine.load(state_build.path, grants=state_build.manifest.grants(), reuse=100)
            assert answer(call(sandbox, "/incr/n", "by=5")) == {"value": 5}
            assert answer(call(sandbox, "/incr/n")) == {"value": 6}
            assert answer(call(sandbox, "/set/a", body=b"value")) == {"set": 5}
            assert answer(call(sandbox, "/get/a")) == {"value": "value", "length": 5}
            assert answer(call(sandbox, "/get/absent")) == {"value": None}
            assert answer(call(sandbox, "/exists/a")) == {"exists": True}
            assert answer(call(sandbox, "/keys")) == {"keys": ["a", "n"]}
            assert answer(call(sandbox, "/delete/a")) == {"deleted": True}
            assert answer(call(sandbox, "/exists/a")) == {"exists": False}
            size = 1024 * 1024
            assert answer(call(sandbox, "/fill/big", f"size={size}")) == {
                "size": size,
                "same": True,
            }
            status, code, _ = error(call(sandbox, "/set/k", body=b"x" * 100, max_kv_store=50))
            assert (status, code) == (507, "kv_quota_exceeded")
            call(sandbox, "/set/word", body=b"hello")
            assert error(call(sandbox, "/incr/word"))[:2] == (500, "kv_not_integer")
    finally:
        store.close()


@pytest.mark.parametrize("stored", [b" 7", b"7\n", b"1_000", b"\xd9\xa4", b"0x10", b"+7", b"-007"])
def test_memorykv_and_the_host_agree_on_what_incr_can_add_to(stored: bytes, tmp_path: Path) -> None:
    # A unit test with MemoryKV must not pass where the gateway answers 500
    # kv_not_integer: Python's int() also takes spaces, "_" and non-ASCII digits.
    open_registry(None, tmp_path).close()
    host = open_key_value(None, tmp_path)
    quota, deadline = StoreQuota(2**20, 100), time.monotonic() + 10
    try:
        host.set("f", "s", "k", stored, None, quota, deadline)
        try:
            expected: int | str = host.incr("f", "s", "k", 1, None, quota, deadline)
        except KVFailure as failure:
            expected = failure.kind
    finally:
        host.close()
    memory = MemoryKV()
    memory.set("s", "k", stored)
    try:
        got: int | str = memory.incr("s", "k")
    except kv.KVError as exc:
        got = exc.kind
    assert got == expected


def test_a_sandbox_a_deploy_loaded_is_handed_only_to_its_own_function_and_grants(
    tmp_path: Path,
) -> None:
    # Two deploys in one worker of the same component bytes (environment, reuse
    # and hosts alike) left their sandboxes in one handoff slot: the table could
    # serve function A with the sandbox loaded for B, whose grants name B's
    # stores and secrets. So could two versions of one function whose stores differ.
    sha = "0" * 64

    def version(name: str, stores: tuple[str, ...], names: tuple[str, ...] = ()) -> VersionRecord:
        manifest = Manifest(name=name, route=f"/{name}", key_value_stores=stores, secrets=names)
        return VersionRecord(name, 1, f"/{name}", sha, 1, manifest.to_dict(), 0.0)

    a = version("a", ("default",))
    deployer = Deployer(None, None, tmp_path, handoff={})  # type: ignore[arg-type]
    for other in (
        version("b", ("default",)),
        version("a", ("default", "other")),
        version("a", ("default",), ("TOKEN",)),
    ):
        loaded = Manifest.from_dict(other.manifest)
        assert deployer.handoff is not None
        deployer.handoff[_sandbox_key(sha, loaded, other.manifest)] = f"loaded for {other.manifest}"  # type: ignore[assignment]
        assert deployer.take_loaded(a) is None
        assert deployer.take_loaded(other) == f"loaded for {other.manifest}"
    attacks.record(
        AREA,
        "deploy the same component as another function at once, to be served with its "
        "sandbox (its name: its key-value stores and secrets)",
        "a deploy's loaded sandbox is handed only to a version with the same name, stores "
        "and secrets",
    )
