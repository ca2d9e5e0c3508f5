"""Operating a gateway: limit policy, live limits, backpressure, metrics, logs, health."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from edgefn_platform import build
from edgefn_platform.builder import output_path
from edgefn_platform.manifest import load_manifest
from gateway_process import ROOT, GatewayProcess, cli, ended
from waiting import wait_until

HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
CONFIG = """
[maximums]
memory = "256MiB"

[backpressure]
queue_length = 1
queue_wait = "300ms"

[observability]
usage_header = true
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("ops")
    (root / "gateway.toml").write_text(CONFIG)
    env = {"EDGEFN_CONFIG": str(root / "gateway.toml")}
    with GatewayProcess(root / "data", workers=2, extra_env=env) as process:
        for directory in (ROOT / "functions" / "hello", HOSTILE):
            assert cli(process, "deploy", str(directory)).exit_code == 0
        for name in ("hello", "hostile"):
            process.wait_serving(name)
        yield process


@pytest.fixture
def own_hostile(gateway: GatewayProcess) -> Iterator[str]:
    """The hostile fixture deployed under a name of this test's own (and deleted
    after it), so that the limits the test sets reach no other test."""
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    component = (HOSTILE / ".edgefn" / "hostile.wasm").read_bytes()
    # The hostile manifest under that name (its assets are not needed here).
    manifest = (HOSTILE / "edgefn.toml").read_text()
    manifest = manifest.replace('"hostile"', f'"{name}"').replace('assets = "assets"\n', "")
    deployed = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={"component": ("c.wasm", component)},
    )
    assert deployed.status_code == 201, deployed.text
    try:
        gateway.wait_serving(name)
        yield name
    finally:
        gateway.admin("DELETE", f"/v1/functions/{name}")


def fresh_get(gateway: GatewayProcess, path: str, **kwargs: object) -> httpx.Response:
    """A request on a new connection, so the kernel may pick either worker."""
    headers = {"connection": "close", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return gateway.get(path, headers=headers, **kwargs)


def test_a_limit_above_the_maximum_is_clamped_with_a_warning(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    # hello under another name, with its build: the name and limits are not part of
    # what a build reads, so `edgefn deploy` finds it built (a build is ~12 s).
    hello = ROOT / "functions" / "hello"
    directory = tmp_path / "greedy"
    shutil.copytree(hello, directory, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = (hello / "edgefn.toml").read_text()
    greedy = manifest.replace('"hello"', '"greedy"').replace('"/hello"', '"/greedy"')
    (directory / "edgefn.toml").write_text(greedy.replace('"64MiB"', '"512MiB"'))
    built = build(hello).path
    renamed = output_path(directory, load_manifest(directory))
    for suffix in (".wasm", ".build.json"):  # the component and its build's stamp
        shutil.copy(built.with_suffix(suffix), renamed.with_suffix(suffix))
    result = cli(gateway, "deploy", str(directory))
    assert result.exit_code == 0, result.output
    assert "Up to date" in result.output
    assert (
        "warning: memory: 512.0 MiB asked for (manifest), above the maximum of 256.0 MiB"
        in result.output
    )
    shown = cli(gateway, "limits", "greedy").output
    assert re.search(r"memory\s+256.0 MiB\s+maximum", shown)
    assert re.search(r"fuel\s+2,000,000,000\s+manifest", shown)


def test_live_limits_apply_on_every_worker_and_reset(
    gateway: GatewayProcess, own_hostile: str
) -> None:
    name = own_hostile
    changed = cli(gateway, "limits", name, "--fuel", "100000")
    assert changed.exit_code == 0 and re.search(r"fuel\s+100,000\s+override", changed.output)
    codes = {fresh_get(gateway, f"/{name}/counter").json()["error"]["code"] for _ in range(16)}
    assert codes == {"fuel_exhausted"}

    assert cli(gateway, "limits", name, "--reset").exit_code == 0
    assert cli(gateway, "limits", name, "--memory", "16MiB").exit_code == 0
    body = b"x" * (8 * 2**20)
    response = httpx.post(f"{gateway.public_url}/{name}/echo", content=body)
    assert response.status_code == 503 and response.json()["error"]["code"] == "memory_limit"

    reset = cli(gateway, "limits", name, "--reset")
    assert re.search(r"memory\s+64.0 MiB\s+manifest", reset.output)
    assert {fresh_get(gateway, f"/{name}/counter").status_code for _ in range(8)} == {200}
    assert httpx.post(f"{gateway.public_url}/{name}/echo", content=body).status_code == 200


def test_a_busy_function_is_overloaded_while_others_answer(
    gateway: GatewayProcess, own_hostile: str
) -> None:
    name = own_hostile
    limited = cli(gateway, "limits", name, "--concurrency", "1", "--timeout", "5s")
    assert limited.exit_code == 0, limited.output
    results: list[httpx.Response] = []

    def slow() -> None:
        results.append(fresh_get(gateway, f"/{name}/sleep?seconds=1.5"))

    threads = [threading.Thread(target=slow) for _ in range(10)]
    try:
        for thread in threads:
            thread.start()
        wait_until(
            lambda: gateway.metric("edgefn_in_flight", function=name) >= 1,
            message="a slow request to be running",
        )
        assert fresh_get(gateway, "/hello/").status_code == 200  # another function is fine
    finally:
        for thread in threads:
            thread.join()
    overloaded = [r for r in results if r.status_code == 503]
    assert overloaded and all(r.json()["error"]["code"] == "overloaded" for r in overloaded)
    assert all(r.headers["retry-after"] == "1" for r in overloaded)
    # Two workers, each running one and queueing at most one.
    assert 1 <= sum(r.status_code == 200 for r in results) <= 4


def test_metrics_count_a_known_mix_across_workers(gateway: GatewayProcess) -> None:
    component = (HOSTILE / ".edgefn" / "hostile.wasm").read_bytes()
    deployed = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": 'name = "metered"\n[env]\nDECLARED = "x"\n'},
        files={"component": ("c.wasm", component)},
    )
    assert deployed.status_code == 201, deployed.text
    gateway.wait_serving("metered")
    for path, times in (("/metered/counter", 5), ("/metered/raise", 2), ("/metered/loop", 1)):
        for _ in range(times):
            fresh_get(gateway, path)
    text = gateway.admin("GET", "/metrics").text

    def sample(name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(name + "{"):
                found = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
                if found == wanted:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    requests = "edgefn_requests_total"
    assert sample(requests, function="metered", status="200", outcome="ok") == 5
    assert sample(requests, function="metered", status="500", outcome="function_error") == 2
    assert sample(requests, function="metered", status="503", outcome="fuel_exhausted") == 1
    assert sample("edgefn_execute_seconds_count", function="metered") == 8
    assert sample("edgefn_fuel_consumed_total", function="metered") > 2_000_000_000
    assert sample("edgefn_deploys_total", function="metered") == 1
    assert sample("edgefn_aot_cache_total", result="hit") >= 2  # both workers loaded it


def test_access_log_is_json_with_the_documented_fields(gateway: GatewayProcess) -> None:
    fresh_get(gateway, "/hello/", headers={"x-request-id": "access-check-1"})

    def logged() -> list[dict[str, object]]:
        return [
            json.loads(line)
            for line in gateway.log.read_text().splitlines()
            if line.startswith("{") and "access-check-1" in line
        ]

    entries = wait_until(logged, message="the access line in the gateway's log")
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) >= {
        "time",
        "request_id",
        "function",
        "version",
        "method",
        "path",
        "status",
        "outcome",
        "queue_ms",
        "instantiate_ms",
        "execute_ms",
        "total_ms",
        "fuel",
        "bytes_in",
        "bytes_out",
    }
    assert (entry["function"], entry["status"], entry["outcome"]) == ("hello", 200, "ok")


def test_guest_log_lines_carry_the_request_id(gateway: GatewayProcess) -> None:
    fresh_get(gateway, "/hostile/print", headers={"x-request-id": "print-check-1"})
    gateway.wait_logged("hostile", ["print-check-1"])
    lines = gateway.admin("GET", "/v1/functions/hostile/logs?limit=1000").json()
    mine = [r["line"] for r in lines if r["request_id"] == "print-check-1" and r["kind"] == "log"]
    assert mine == ["printed line", "WARNING hostile: logged line"]


def test_logs_follow_sees_a_new_line(gateway: GatewayProcess) -> None:
    with ended(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefn_platform",
                "logs",
                "hello",
                "--follow",
                "--gateway",
                gateway.admin_url,
                "--token",
                gateway.token,
            ],
            stdout=subprocess.PIPE,
        )
    ) as follower:
        wait_until(
            lambda: connected(follower.pid, gateway.admin_port),
            message="edgefn logs --follow to reach the admin API",
        )
        fresh_get(gateway, "/hello/", headers={"x-request-id": "follow-check-1"})
        seen = b""
        assert follower.stdout is not None
        fd = follower.stdout.fileno()
        os.set_blocking(fd, False)

        def read() -> bool:
            nonlocal seen
            with contextlib.suppress(BlockingIOError):
                seen += os.read(fd, 65536)
            return b"follow-chec" in seen

        wait_until(read, timeout=10, message="the new line")
        assert b"follow-chec" in seen


def connected(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP connection established to loopback `port`."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            sockets.add(os.readlink(fd))
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()  # remote address, state (01: established), inode
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":
            if f"socket:[{fields[9]}]" in sockets:
                return True
    return False


def test_server_timing_and_usage_headers(gateway: GatewayProcess) -> None:
    response = gateway.get("/hello/")
    assert re.fullmatch(
        r"cache;desc=miss, queue;dur=[\d.]+, instantiate;dur=[\d.]+, execute;dur=[\d.]+",
        response.headers["server-timing"],
    )
    assert re.fullmatch(r"fuel=\d+", response.headers["x-edgefn-usage"])


def test_health_on_both_listeners(gateway: GatewayProcess) -> None:
    for base in (gateway.public_url, gateway.admin_url):
        assert httpx.get(base + "/healthz").json() == {"status": "alive"}
        assert httpx.get(base + "/readyz").json() == {"status": "ready"}


def test_restart_is_ready_only_once_compiled_and_warm(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as first:
        assert cli(first, "deploy", str(ROOT / "functions" / "hello")).exit_code == 0
    # A new AOT cache: the restart must compile before it reports ready.
    gateway = GatewayProcess(
        tmp_path / "data", extra_env={"EDGEFN_CACHE_DIR": str(tmp_path / "cold")}
    )
    with gateway.start(wait_for="/healthz"):
        # Not ready: the admin listener says so, and the public one is not open yet.
        assert httpx.get(gateway.admin_url + "/readyz").status_code == 503
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.public_url + "/readyz")
        gateway.wait_ready()
        started = time.perf_counter()
        assert gateway.get("/hello/").status_code == 200
        first_request = time.perf_counter() - started
        warm = []
        for _ in range(20):
            started = time.perf_counter()
            gateway.get("/hello/")
            warm.append(time.perf_counter() - started)
        assert first_request <= max(3 * statistics.median(warm), 0.05)


def test_sigterm_lets_a_slow_request_finish(tmp_path: Path) -> None:
    delay = {"EDGEFN_SHUTDOWN_DELAY": "4"}  # not the default (1 s), nor the tests' (0)
    with GatewayProcess(tmp_path / "data", extra_env=delay) as gateway:
        assert cli(gateway, "deploy", str(HOSTILE)).exit_code == 0
        assert cli(gateway, "limits", "hostile", "--timeout", "5s").exit_code == 0
        result: list[httpx.Response] = []
        slow = threading.Thread(
            target=lambda: result.append(gateway.get("/hostile/sleep?seconds=2"))
        )
        slow.start()
        try:
            wait_until(
                lambda: gateway.metric("edgefn_in_flight", function="hostile") >= 1,
                message="the slow request to be running",
            )
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)

            def readyz() -> int:
                try:
                    return httpx.get(gateway.public_url + "/readyz").status_code
                except httpx.HTTPError:
                    return 0

            wait_until(lambda: readyz() != 200, message="/readyz to report the drain")
            assert httpx.get(gateway.public_url + "/readyz").status_code == 503
            time.sleep(1.5)  # past the default delay: still reporting it
            assert httpx.get(gateway.public_url + "/readyz").status_code == 503
        finally:
            slow.join()
        assert result[0].status_code == 200 and result[0].text == "woke up\n"
        assert gateway.process.wait(timeout=20) == 0


# ESC [2J clears a terminal, ESC ] 0 ; ... BEL retitles its window, U+202E reverses
# what follows. (A CR or LF cannot be in one guest line: the runtime splits lines there.)
TERMINAL_TRICKS = "\x1b[2Jcleared \x1b]0;owned\x07 \u202eesrever"


def test_logs_print_whole_request_ids_filter_by_one_and_escape(gateway: GatewayProcess) -> None:
    ours, other = f"logs-{uuid.uuid4().hex}", f"logs-{uuid.uuid4().hex}"
    for request_id in (ours, other):
        response = fresh_get(
            gateway,
            "/hostile/print",
            params={"text": TERMINAL_TRICKS},
            headers={"x-request-id": request_id},
        )
        assert response.headers["x-request-id"] == request_id
    path = f"/v1/functions/hostile/logs?request_id={ours}"
    wait_until(
        lambda: len(gateway.admin("GET", path).json()) >= 3,  # print, logging, access
        timeout=10,
        message="the request's log lines",
    )
    found = gateway.admin("GET", path).json()
    assert {r["request_id"] for r in found} == {ours}
    assert [r["kind"] for r in found] == ["log", "log", "access"]
    for bad in ("", "a%00b", "x" * 1025):
        refused = gateway.admin("GET", f"/v1/functions/hostile/logs?request_id={bad}")
        assert refused.status_code == 400, bad

    shown = cli(gateway, "logs", "hostile", "--request-id", ours)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert len(lines) == 3 and all(f" {ours} " in line for line in lines)
    assert lines[0].endswith(" log    \\x1b[2Jcleared \\x1b]0;owned\\x07 \\u202eesrever")
    assert not set(shown.output) & set("\x1b\x07\u202e")

    raw = cli(gateway, "logs", "hostile", "--request-id", ours, "--json")
    assert raw.exit_code == 0, raw.output
    records = [json.loads(line) for line in raw.output.splitlines()]
    assert records == found
    assert records[0]["line"] == TERMINAL_TRICKS
    assert not set(raw.output) & set("\x1b\x07\u202e")
    attacks.record(
        "Logs (tests/test_operations.py, tests/test_log_output.py)",
        "a function prints, and a client sends in its path, ANSI escapes, CR, C1 controls "
        "and bidi overrides, to forge or hide lines on the operator's terminal",
        "escaped (`\\x1b`, `\\r`, `\\x85`, `\\u202e`) in `edgefn logs`, `edgefn invoke`, the "
        "human access line and the gateway's own log; `edgefn logs --json` keeps the raw "
        "values, JSON-escaped",
    )
