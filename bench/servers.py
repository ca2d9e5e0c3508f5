"""HTTP servers for the public listener (issue 20), measured, not switched.

1. `hello`: the same trivial answer under uvicorn + httptools + uvloop (with and
   without the gateway's guarded protocol, `gateway/_http.py`), granian (ASGI, and
   RSGI with an RSGI-native hello) and a bare `asyncio.Protocol` + httptools
   server, 1 and 2 worker processes; wrk, `--runs` rounds (the servers' order
   rotated each round; the guarded one once more with the cyclic garbage
   collector off), req/s, p99 and the servers' CPU per request (user +
   system of every process of the server, over the load), ratios against
   uvicorn measured in the same round.
2. `public`: the gateway's `PublicApp` serving a `reuse = true` hello
   (`bench/functions/bench`) under `edgefn serve` as shipped, in a bench-only
   harness under uvicorn with the gateway's protocol (what a worker runs, less
   the admin listener; once more with the cyclic garbage collector off, to price
   the reference cycles a request leaves) and under granian (ASGI, the same app
   built by a factory), 2 workers each, beside FastAPI (`bench/baseline_app.py`).
3. `protections`: the raw-socket cases of `tests/test_hostile_http.py`, unchanged,
   against `PublicApp` under the uvicorn harness and under granian (its
   `--http1-header-read-timeout` set to the tests' header timeout): what each
   server answers, and how fast.

    python bench/servers.py [--parts hello,public,protections] [--runs 3]
        [--seconds 10] [--connections 50] [--workers 1,2]

Needs `wrk` and granian (`pip install -e '.[bench]'`); without granian its rows
are skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from _targets import verdict  # noqa: E402
from baseline import start_baseline  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess, cli  # noqa: E402
from waiting import wait_until  # noqa: E402

HAS_GRANIAN = importlib.util.find_spec("granian") is not None
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The raw-socket tests' own timeouts (tests/test_hostile_http.py).
HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 3.0


@dataclass
class Load:
    """One wrk run: requests/s, p50 and p99 in ms, and the server's CPU per request."""

    rps: float
    p50: float
    p99: float
    cpu_us: float


# --- starting and stopping servers ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def granian_command(interface: str, target: str, workers: int, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", interface, "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "1",
        "--no-ws", "--log-level", "warning", "--working-dir", str(HERE), *extra, target,
    ]  # fmt: skip


def commands(kind: str, workers: int, port: int) -> list[list[str]]:
    """The processes that serve `kind` with `workers` workers on `port`: one per
    worker for our own servers (SO_REUSEPORT, as the gateway), one for granian
    (it forks its workers)."""
    if kind == "granian-asgi":
        return [granian_command("asgi", "server_apps:hello", workers, port)]
    if kind == "granian-rsgi":
        return [granian_command("rsgi", "server_apps:rsgi_hello", workers, port)]
    if kind == "public-granian":
        timeout = str(int(HEADER_TIMEOUT * 1000))
        extra = ["--factory", "--http1-header-read-timeout", timeout]
        return [granian_command("asgi", "server_apps:public_app", workers, port, *extra)]
    return [[sys.executable, str(HERE / "server_apps.py"), kind, str(port)] for _ in range(workers)]


@contextlib.contextmanager
def serving(
    kind: str, workers: int, ready_path: str = "/", env: dict[str, str] | None = None
) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """`kind` listening on a loopback port, ready (`ready_path` answered 200 on 20
    new connections, so on every worker likely); stopped (its process groups) on exit."""
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"edgefn-bench-servers-{kind}.log", "ab")  # noqa: SIM115
    processes = [
        subprocess.Popen(
            command,
            cwd=HERE,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        for command in commands(kind, workers, port)
    ]

    def answers() -> bool:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited with {process.returncode} (see {log.name})")
        try:
            return all(
                httpx.get(f"http://127.0.0.1:{port}{ready_path}").status_code == 200
                for _ in range(20)
            )
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=60, interval=0.1, message=f"{kind} to answer")
        yield port, processes
    finally:
        stop(processes)
        log.close()


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group we started; SIGKILL what is left after 10 s."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes `roots` and
    every process they started (a server and the workers it forked)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        # After "(command)": state, ppid, ..., utime and stime are the 12th and 13th.
        fields = stat.rsplit(")", 1)[1].split()
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total = 0
    for pid in ticks:
        ancestor = pid
        while ancestor > 1 and ancestor not in roots:
            ancestor = parent.get(ancestor, 0)
        if ancestor in roots:
            total += ticks[pid]
    return total / CLOCK_TICKS


def wrk(url: str, seconds: int, connections: int, roots: list[int]) -> Load:
    """wrk against `url`, with the CPU the server (`roots` and their children) used meanwhile."""
    before = tree_cpu(roots)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = tree_cpu(roots) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print("  warning: " + " / ".join(re.findall(r"(Non-2xx.*|Socket errors.*)", out)))

    def percentile(p: str) -> float:
        value, unit = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Load(rps, percentile("50"), percentile("99"), cpu / max(requests, 1) * 1e6)


def measure(
    kind: str, workers: int, args: argparse.Namespace, path: str = "/", **kwargs: Any
) -> Load:
    with serving(kind, workers, path, **kwargs) as (port, processes):
        leaders = [p.pid for p in processes]
        url = f"http://127.0.0.1:{port}{path}"
        wrk(url, 2, args.connections, leaders)  # warm-up, not counted
        return wrk(url, args.seconds, args.connections, leaders)


# --- reporting ---------------------------------------------------------------------


def report(title: str, rounds: list[dict[str, Load]], reference: str) -> dict[str, float]:
    """Median over rounds of each server's figures, and of its per-round ratios to
    `reference`; returns the median req/s ratio per server."""
    print(f"\n{title} ({len(rounds)} rounds; medians; ratios per round, then their median)")
    print(
        f"  {'server':22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}"
        f"   vs {reference}: req/s (range)       p99   CPU/req"
    )
    ratios: dict[str, float] = {}
    for kind in rounds[0]:
        loads = [r[kind] for r in rounds if kind in r]
        rps = [r[kind].rps / r[reference].rps for r in rounds if kind in r]
        p99 = [r[kind].p99 / r[reference].p99 for r in rounds if kind in r]
        cpu = [r[kind].cpu_us / r[reference].cpu_us for r in rounds if kind in r]
        ratios[kind] = statistics.median(rps)
        line = (
            f"  {kind:22} {statistics.median(x.rps for x in loads):8.0f}"
            f" {statistics.median(x.p50 for x in loads):7.2f}"
            f" {statistics.median(x.p99 for x in loads):7.2f}"
            f" {statistics.median(x.cpu_us for x in loads):10.0f}"
        )
        if kind != reference:
            line += (
                f"   {ratios[kind]:13.2f}x ({min(rps):.2f}-{max(rps):.2f})"
                f" {statistics.median(p99):6.2f}x {statistics.median(cpu):6.2f}x"
            )
        print(line, flush=True)
    return ratios


# --- the three parts -----------------------------------------------------------------


def part_hello(args: argparse.Namespace) -> None:
    kinds = ["uvicorn", "uvicorn-guarded", "uvicorn-guarded-nogc", "bare"]
    if HAS_GRANIAN:
        kinds += ["granian-asgi", "granian-rsgi"]
    for workers in args.workers:
        rounds = []
        for i in range(args.runs):
            order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
            loads = {kind: measure(kind, workers, args) for kind in order}
            rounds.append({kind: loads[kind] for kind in kinds})
            print(
                f"  round {i + 1}, {workers} worker(s): "
                + ", ".join(f"{k} {v.rps:.0f}/s" for k, v in rounds[-1].items()),
                flush=True,
            )
        report(f"hello, {workers} worker process(es)", rounds, "uvicorn")


def deploy(gateway: GatewayProcess, manifest: str, component: bytes, name: str) -> None:
    gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={"component": (f"{name}.wasm", component)},
    ).raise_for_status()
    gateway.wait_serving(name)


def part_public(args: argparse.Namespace, data: Path) -> None:
    function = HERE / "functions" / "bench"
    result = build(function)
    manifest = "reuse = true\n" + (function / "edgefn.toml").read_text()
    workers = 2
    gateway = GatewayProcess(data, workers=workers)
    with gateway:
        deploy(gateway, manifest, result.path.read_bytes(), "bench")
    env = {"EDGEFN_BENCH_DATA_DIR": str(data)}
    kinds = ["public-uvicorn", "public-uvicorn-nogc"] + (["public-granian"] if HAS_GRANIAN else [])
    rounds = []
    baseline, port = start_baseline("baseline_app:app", "/bench/")
    try:
        for i in range(args.runs):
            loads: dict[str, Load] = {}
            fastapi = [baseline.pid]
            url = f"http://127.0.0.1:{port}/bench/"
            wrk(url, 2, args.connections, fastapi)
            loads["fastapi"] = wrk(url, args.seconds, args.connections, fastapi)
            with gateway:
                assert gateway.process is not None
                url = f"{gateway.public_url}/bench/"
                wrk(url, 2, args.connections, [gateway.process.pid])
                loads["edgefn serve"] = wrk(
                    url, args.seconds, args.connections, [gateway.process.pid]
                )
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                loads[kind] = measure(kind, workers, args, "/bench/", env=env)
            rounds.append(loads)
            print(
                f"  round {i + 1}: " + ", ".join(f"{k} {v.rps:.0f}/s" for k, v in loads.items()),
                flush=True,
            )
    finally:
        baseline.terminate()
        baseline.wait()
    title = f"PublicApp, reuse = true hello, {workers} workers"
    ratios = report(title, rounds, "fastapi")
    for kind in ratios:
        if kind != "fastapi" and not kind.endswith("-nogc"):
            verdict(
                f"reuse hello through {kind} vs FastAPI req/s ({len(rounds)} runs, median)",
                f"{ratios[kind]:.2f}x",
                ">= 0.6x",
                ratios[kind] >= 0.6,
            )
    report(title + ", against the uvicorn harness", rounds, "public-uvicorn")


class _Target:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=30)


def part_protections(data: Path) -> None:
    import test_hostile_http as cases  # the raw-socket tests' own data and helpers

    with GatewayProcess(data, workers=1) as gateway:
        assert cli(gateway, "deploy", str(ROOT / "tests" / "functions" / "hostile")).exit_code == 0
    malformed = cases.test_malformed_requests_get_a_4xx_and_a_closed_connection.pytestmark
    stalled = cases.test_stalled_requests_time_out_with_408.pytestmark
    checks: list[tuple[str, str, Callable[[_Target], tuple[str, bool]]]] = []
    for attack, request, status in malformed[0].args[1]:
        checks.append((attack, f"{status}, closed", _sent(cases, request, 10, status, None)))
    for attack, request, limit, code in stalled[0].args[1]:
        wanted = f"408 {code}, < {limit + 1:.0f} s"
        checks.append((attack, wanted, _sent(cases, request, limit + 5, 408, code, limit + 1)))
    checks.append(
        ("slowloris: one header every 0.5 s", f"cut, < {HEADER_TIMEOUT + 2:.0f} s", _slowloris)
    )
    env = {
        "EDGEFN_BENCH_DATA_DIR": str(data),
        "EDGEFN_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "EDGEFN_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    kinds = ["public-uvicorn"] + (["public-granian"] if HAS_GRANIAN else [])
    seen: dict[str, list[tuple[str, bool]]] = {}
    for kind in kinds:
        with serving(kind, 1, "/hostile/json", env=env) as (port, _):
            seen[kind] = [check(_Target(port)) for _, _, check in checks]
    print("\nraw-socket cases of tests/test_hostile_http.py, PublicApp on 1 worker")
    print(f"  {'case':44} {'the test wants':22} " + " ".join(f"{k:34}" for k in kinds))
    for i, (attack, wanted, _) in enumerate(checks):
        row = " ".join(
            f"{('ok   ' if ok else 'FAIL ') + what:34}" for what, ok in (seen[k][i] for k in kinds)
        )
        print(f"  {attack[:44]:44} {wanted:22} {row}")
    for kind in kinds:
        passed = sum(ok for _, ok in seen[kind])
        print(f"  {kind}: {passed} of {len(checks)} cases as the tests want")


def _sent(
    cases: Any, request: bytes, wait: float, status: int, code: str | None, limit: float = 10
) -> Callable[[_Target], tuple[str, bool]]:
    """A case of the tests: `request` sent, the answer described, and whether it is
    what the test asserts (`status`, the JSON error `code` if given, closed within `limit`)."""

    def check(target: _Target) -> tuple[str, bool]:
        response, took = cases.exchange(target, request, wait=wait)
        answered = cases.status_of(response)
        try:
            what = f"{answered} {cases.error_code(response)}"
            json_error = True
        except (ValueError, KeyError, TypeError, IndexError):
            what = f"{answered} (no JSON error)" if answered else "no answer"
            json_error = False
        closed = not response.endswith(b"<still open>")
        ok = answered == status and json_error and closed and took < limit
        if code is not None:
            ok = ok and what == f"{status} {code}"
        return f"{what}{'' if closed else ', left open'}, {took:.1f} s", ok

    return check


def _slowloris(target: _Target) -> tuple[str, bool]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", target.port)) as sock:
        sock.sendall(b"GET /hostile/json HTTP/1.1\r\n")
        try:
            for i in range(40):  # one header every half second, for 20 s
                sock.sendall(b"X-%d: 1\r\n" % i)
                time.sleep(0.5)  # the attack's pace
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(1)
        try:
            received = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            received = b""
    took = time.perf_counter() - started
    status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "closed"
    ok = took < HEADER_TIMEOUT + 2 and status in ("closed", "408")
    return f"{status}, cut after {took:.1f} s", ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="hello,public,protections")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", default="1,2", type=lambda s: [int(w) for w in s.split(",")])
    args = parser.parse_args()
    parts = args.parts.split(",")
    if not HAS_GRANIAN:
        print("granian is not installed (pip install -e '.[bench]'): its rows are skipped")
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s; a 2 s warm-up before each")
    if "hello" in parts:
        part_hello(args)
    with tempfile.TemporaryDirectory() as temp:
        if "public" in parts:
            part_public(args, Path(temp) / "public")
        if "protections" in parts:
            part_protections(Path(temp) / "hostile")


if __name__ == "__main__":
    main()
