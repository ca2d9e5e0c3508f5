"""Key-value stores end to end: functions (tests/functions/counter) reading and
writing through a real gateway, fresh instances, restarts, concurrency on one
gateway and across two sharing PostgreSQL, limits tuned live, isolation between
functions, metrics, and SIGKILL in the middle of writes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway_process import ROOT, GatewayProcess, cli, deploy_as, worker_pids
from waiting import wait_until

pytestmark = pytest.mark.wasm

COUNTER = ROOT / "tests" / "functions" / "counter"
NAME = "counter"
_unique = iter(range(10**9))


def unique(prefix: str) -> str:
    """A key no other test uses."""
    return f"{prefix}-{time.time_ns()}-{next(_unique)}"


def deploy(gateway: GatewayProcess, name: str = NAME) -> None:
    """tests/functions/counter as `name` (one build, any number of names)."""
    deploy_as(gateway, COUNTER, name)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two workers on the embedded registry, serving NAME."""
    with GatewayProcess(tmp_path_factory.mktemp("kv") / "data", workers=2) as process:
        deploy(process)
        yield process


def incr(gateway: GatewayProcess, key: str, name: str = NAME, **query: str) -> int:
    response = httpx.get(
        f"{gateway.public_url}/{name}/incr", params={"key": key, **query}, timeout=30
    )
    assert response.status_code == 200, response.text
    return int(response.json()["value"])


def concurrent_incrs(gateways: list[GatewayProcess], key: str, count: int) -> list[int]:
    """`count` increments at once, spread over `gateways` in turn, each on a new connection."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(incr, gateways[i % len(gateways)], key) for i in range(count)]
        return [future.result() for future in futures]


def test_values_outlive_fresh_instances(gateway: GatewayProcess) -> None:
    # Every request of the counter runs in a fresh instance (no `reuse`).
    key = unique("fresh")
    assert [incr(gateway, key) for _ in range(3)] == [1, 2, 3]
    assert incr(gateway, key, by="-10") == -7


def test_set_get_keys_through_a_function(gateway: GatewayProcess) -> None:
    prefix = unique("values")
    value = bytes(range(256)) * 4096  # 1 MiB, every byte value
    url = f"{gateway.public_url}/{NAME}/value"
    put = httpx.put(url, params={"key": f"{prefix}/big"}, content=value, timeout=30)
    assert put.status_code == 204, put.text
    got = httpx.get(url, params={"key": f"{prefix}/big"}, timeout=30)
    assert got.status_code == 200 and got.content == value
    assert httpx.get(url, params={"key": f"{prefix}/none"}, timeout=30).status_code == 404
    listed = httpx.get(f"{gateway.public_url}/{NAME}/keys", params={"prefix": prefix}, timeout=30)
    assert listed.json() == {"keys": [f"{prefix}/big"]}


def test_fifty_concurrent_increments_end_at_fifty(gateway: GatewayProcess) -> None:
    key = unique("fifty")
    values = concurrent_incrs([gateway], key, 50)
    assert sorted(values) == list(range(1, 51))
    assert incr(gateway, key, by="0") == 50


def test_ttl_expires(gateway: GatewayProcess) -> None:
    key = unique("ttl")
    url = f"{gateway.public_url}/{NAME}/value"
    assert httpx.put(url, params={"key": key, "ttl": "1"}, content=b"x").status_code == 204
    assert httpx.get(url, params={"key": key}).status_code == 200
    wait_until(
        lambda: httpx.get(url, params={"key": key}).status_code == 404,
        timeout=10,
        message="the value to expire",
    )
    # An expired counter starts again from 0.
    counter = unique("ttl-counter")
    assert incr(gateway, counter, ttl="1") == 1
    wait_until(lambda: incr(gateway, counter, by="0") == 0, timeout=10, message="expiry")


def test_functions_never_see_each_others_stores(gateway: GatewayProcess) -> None:
    deploy(gateway, "counter-other")
    key = unique("shared-name")
    assert incr(gateway, key) == 1
    assert incr(gateway, key, name="counter-other") == 1
    assert incr(gateway, key) == 2
    assert incr(gateway, key, name="counter-other", by="0") == 1


def test_undeclared_store_is_refused(gateway: GatewayProcess) -> None:
    response = gateway.get(f"/{NAME}/incr", params={"store": "sessions"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "kv_store_not_declared"
    assert "key_value_stores" in error["message"]


def test_limits_apply_live(gateway: GatewayProcess) -> None:
    """Each limit, lowered with `edgefn limits` (no redeploy), refuses on the
    next request with a message naming it; reset, the same request succeeds."""
    name = "counter-limits"
    deploy(gateway, name)
    base = f"{gateway.public_url}/{name}"
    try:
        result = cli(gateway, "limits", name, "--max-kv-ops", "3", "--max-kv-value", "1KiB")
        assert result.exit_code == 0, result.output
        response = httpx.get(f"{base}/ops", params={"n": "5"}, timeout=30)
        assert response.status_code == 507, response.text
        assert response.json()["error"]["code"] == "kv_quota_exceeded"
        assert "max_kv_ops" in response.json()["error"]["message"]
        # kv.open plus two operations: within 3.
        assert httpx.get(f"{base}/ops", params={"n": "2"}, timeout=30).status_code == 200

        response = httpx.put(f"{base}/value", params={"key": "big"}, content=b"x" * 1025)
        assert response.status_code == 500, response.text
        assert response.json()["error"]["code"] == "kv_value_too_large"
        assert "max_kv_value" in response.json()["error"]["message"]

        result = cli(gateway, "limits", name, "--reset")
        assert result.exit_code == 0, result.output
        result = cli(gateway, "limits", name, "--max-kv-keys", "2")
        assert result.exit_code == 0, result.output
        for key in ("a", "b"):
            assert httpx.put(f"{base}/value", params={"key": key}, content=b"1").status_code == 204
        response = httpx.put(f"{base}/value", params={"key": "c"}, content=b"1")
        assert response.status_code == 507, response.text
        assert "max_kv_keys" in response.json()["error"]["message"]
        # Replacing a value adds no key.
        assert httpx.put(f"{base}/value", params={"key": "a"}, content=b"2").status_code == 204
    finally:
        assert cli(gateway, "limits", name, "--reset").exit_code == 0


def test_metrics_count_operations_and_stored_bytes(gateway: GatewayProcess) -> None:
    before = gateway.metric(
        "edgefn_kv_operations_total", function=NAME, operation="incr", result="ok"
    )
    incr(gateway, unique("metrics"))
    wait_until(
        lambda: (
            gateway.metric(
                "edgefn_kv_operations_total", function=NAME, operation="incr", result="ok"
            )
            == before + 1
        ),
        timeout=10,
        message="the increment to be counted",
    )
    assert gateway.metric("edgefn_kv_stored_bytes", function=NAME) > 0
    response = gateway.get(f"/{NAME}/incr", params={"key": unique("timing")})
    assert "kv;dur=" in response.headers["server-timing"]


def test_values_survive_a_restart_and_sigkill(tmp_path: Path) -> None:
    """SIGKILL of every gateway process while increments are in flight loses none
    that a client saw acknowledged; a clean restart keeps everything."""
    with GatewayProcess(tmp_path / "data", workers=2) as gateway:
        deploy(gateway)
        assert incr(gateway, "restart") == 1
        gateway.stop()
        gateway.start()
        assert incr(gateway, "restart") == 2

        acknowledged: list[int] = []

        def hammer() -> None:
            while True:
                try:
                    acknowledged.append(incr(gateway, "killed"))
                except (httpx.HTTPError, AssertionError):
                    return

        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(4):
                pool.submit(hammer)
            wait_until(lambda: len(acknowledged) >= 40, timeout=60, message="increments")
            assert gateway.process is not None
            for pid in [*worker_pids(gateway), gateway.process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            gateway.process.wait()
        gateway.start()
        # Every acknowledged value was committed: the next one is past them all
        # (an increment in flight at the kill may have committed unanswered).
        assert incr(gateway, "killed") > max(acknowledged)
        assert sorted(acknowledged) == sorted(set(acknowledged))


def test_two_gateways_share_every_value(tmp_path: Path, database_url: str) -> None:
    """Two gateways on one PostgreSQL registry: 50 concurrent increments split
    between them end at exactly 50, and each sees what the other wrote."""
    with (
        GatewayProcess(tmp_path / "a", workers=2, database_url=database_url) as a,
        GatewayProcess(tmp_path / "b", workers=2, database_url=database_url) as b,
    ):
        deploy(a)
        b.wait_serving(NAME, 1)
        key = unique("two")
        values = concurrent_incrs([a, b], key, 50)
        assert sorted(values) == list(range(1, 51))
        assert incr(b, key, by="0") == 50 and incr(a, key, by="0") == 50
