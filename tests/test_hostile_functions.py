"""Hostile functions behind a real gateway: each misbehaviour gets its documented
status and code, the gateway stays up, and a healthy neighbour keeps answering
(and keeps its latency while the hostile routes are hammered: test_fairness.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import attacks
from gateway_process import ROOT, GatewayProcess, cli

FUNCTIONS = Path(__file__).resolve().parent / "functions"
AREA = "Hostile functions (tests/test_hostile_functions.py)"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    with GatewayProcess(data_dir, workers=2) as process:
        for directory in (ROOT / "functions" / "hello", FUNCTIONS / "hostile"):
            result = cli(process, "deploy", str(directory))
            assert result.exit_code == 0, result.output
        result = cli(process, "deploy", str(ROOT / "functions" / "watermark"))
        assert result.exit_code == 0, result.output
        for name in ("hello", "hostile", "watermark"):
            process.wait_serving(name)  # both workers pick the functions up
        yield process


def neighbour_answers(gateway: GatewayProcess) -> None:
    response = gateway.get("/hello/")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("attack", "path", "status", "code"),
    [
        ("infinite loop", "/hostile/loop", 503, "fuel_exhausted"),
        ("memory bomb (1 MiB allocations forever)", "/hostile/alloc", 503, "memory_limit"),
        ("deep recursion", "/hostile/recurse", 500, "function_error"),
        ("stack overflow past the recursion limit", "/hostile/crash", 502, "function_crashed"),
        ("1 GB response", "/hostile/big?size=1000000000", 502, "response_too_large"),
        ("200 response headers", "/hostile/headers?count=200", 502, "response_too_large"),
        ("a 1 MB response header", "/hostile/headers?size=1000000", 502, "response_too_large"),
        ("header with CR LF injection", "/hostile/bad-header", 502, "invalid_response"),
        ("header with terminal escapes", "/hostile/control-header", 502, "invalid_response"),
        (
            "status 101 with `Upgrade: websocket` (a raw tunnel behind a proxy)",
            "/hostile/status?code=101&upgrade=1",
            502,
            "invalid_response",
        ),
        ("status 100", "/hostile/status?code=100", 502, "invalid_response"),
        ("status 600", "/hostile/status?code=600", 502, "invalid_response"),
        ("status 99", "/hostile/status?code=99", 502, "invalid_response"),
        ("sleeping past the timeout", "/hostile/sleep?seconds=30", 504, "timeout"),
        ("raising inside a generator", "/hostile/raise-in-generator", 500, "function_error"),
        ("raising inside `finally`", "/hostile/raise-in-finally", 500, "function_error"),
        ("sys.exit()", "/hostile/exit", 500, "function_error"),
        ("os._exit()", "/hostile/exit-hard", 500, "function_error"),
    ],
)
def test_each_misbehaviour_has_its_status_and_the_neighbour_answers(
    gateway: GatewayProcess, attack: str, path: str, status: int, code: str
) -> None:
    started = time.perf_counter()
    response = gateway.get(path)
    took = time.perf_counter() - started
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text and str(gateway.data_dir) not in response.text
    assert took < 5  # the hostile fixture's timeout is 1 s
    neighbour_answers(gateway)
    attacks.record(
        AREA, attack, f"{status} `{code}` in {took:.2f} s; gateway up, neighbour answers 200"
    )


def test_a_log_flood_is_capped_and_the_response_still_arrives(gateway: GatewayProcess) -> None:
    response = gateway.get("/hostile/log-flood?lines=50000")
    assert response.status_code == 200 and response.text == "still alive\n"
    request_id = response.headers["x-request-id"]
    gateway.wait_logged("hostile", [request_id])  # logs are written in batches
    lines = gateway.admin("GET", "/v1/functions/hostile/logs?limit=1000").json()
    kept = [r["line"] for r in lines if r["request_id"] == request_id and r["kind"] == "log"]
    assert any("log limit" in line for line in kept)
    assert sum(len(line) for line in kept) < 80 * 1024
    neighbour_answers(gateway)
    attacks.record(
        AREA,
        "log flood (50,000 lines of 100 bytes)",
        f"200; {len(kept)} lines kept, then a 'log limit reached' line; neighbour answers 200",
    )


def read(gateway: GatewayProcess, path: str) -> dict[str, str]:
    response = gateway.get("/hostile/read", params={"path": path})
    assert response.status_code == 200, response.text
    result: dict[str, str] = response.json()
    return result


def test_host_files_and_other_functions_assets_are_out_of_reach(
    gateway: GatewayProcess,
) -> None:
    (watermark_assets,) = (p.parent for p in (gateway.data_dir / "assets").glob("*/logo.png"))
    for attack, path in [
        ("read /etc/passwd", "/etc/passwd"),
        ("read /proc/self/environ", "/proc/self/environ"),
        ("read the registry in the data directory", str(gateway.data_dir / "registry.sqlite3")),
        ("read the admin token", str(gateway.data_dir / "admin-token")),
        ("read another function's assets by host path", str(watermark_assets / "logo.png")),
        ("escape its own assets with ..", f"/assets/../{watermark_assets.name}/logo.png"),
        ("escape its own assets with ../..", "/assets/../../etc/passwd"),
    ]:
        result = read(gateway, path)
        assert "read" not in result and "Error" in result["error"], (path, result)
        attacks.record(AREA, attack, f"refused inside the sandbox: `{result['error'][:60]}`")
    assert read(gateway, "/assets/greeting.txt") == {"read": "hello from an asset\n"}


def test_no_listing_network_or_host_environment(gateway: GatewayProcess) -> None:
    listing = gateway.get("/hostile/listdir?path=/").json()
    assert listing.get("entries", []) in ([], ["assets"]), listing
    attacks.record(AREA, "list /", f"sees {listing.get('entries', listing.get('error'))}")

    connect = gateway.get(f"/hostile/socket?port={gateway.admin_port}").json()
    assert "connected" not in connect
    attacks.record(AREA, "connect to the admin port", f"`{connect['error'][:60]}`")

    for host in ("example.com", "localhost"):
        resolved = gateway.get(f"/hostile/resolve?host={host}").json()
        assert "resolved" not in resolved
        attacks.record(AREA, f"resolve {host}", f"`{resolved['error'][:60]}`")

    env = gateway.get("/hostile/env").json()
    assert env == {"DECLARED": "visible"}
    attacks.record(AREA, "read host environment variables", f"sees only {sorted(env)}")


def test_a_mutated_global_is_not_seen_by_the_next_request(gateway: GatewayProcess) -> None:
    counts = {gateway.get("/hostile/counter").json()["counter"] for _ in range(5)}
    assert counts == {1}
    attacks.record(AREA, "mutate a global, read it next request", "counter is 1 every time")
