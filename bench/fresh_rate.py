"""The isolated (fresh instance per request) path at a fixed rate it can carry.

Issue 20's target: at a fixed 200 requests/s (not saturation), the bench function's
hello through `edgefn serve --workers 2` with a fresh instance per request has a p50
within 1 ms of a FastAPI app's at the same rate (`bench/baseline_app.py`, 2 workers),
and a p99 at most 3x. Also printed: CPU per fresh request (the gateway workers' user +
system time over the run, from /proc/PID/stat, divided by the requests), with
2 instances instantiated ahead of demand per function (`EDGEFN_AHEAD_INSTANCES=2`) and
without them (the default), in the same run.

Arrivals are open-loop, at fixed intervals (as wrk2's constant rate; wrk is closed-loop:
a slow answer would delay the next request and hide itself): each request is sent on
time on an idle kept-alive connection (a new one is opened when none is idle), and
its latency counts from when it was due, so a late send counts against the server.
The client is raw HTTP/1.1 on asyncio streams (uvloop when installed), no HTTP library,
the same for every target; it shares the 2 cores, so "sent late" counts its own lag.
On a machine where a fresh request costs more CPU than 2 cores can give 200 times a
second, the run measures queueing: compare the CPU column with 2 cores / rate.

    python bench/fresh_rate.py [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from _targets import verdict  # noqa: E402
from baseline import start_baseline  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess, children, cpu_seconds, worker_pids  # noqa: E402

# Connections opened before the run, so that a steady rate never waits for a handshake;
# SO_REUSEPORT spreads them over both workers.
_CONNECTIONS = 16


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        """Send `request`, read the whole response; its status."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])


@dataclass
class Result:
    latencies: list[float]  # ms, from when each request was due
    errors: int  # answers other than 200
    late: int  # requests the client sent more than 1 ms after they were due
    cpu_ms: float = 0.0  # the server processes' CPU per request

    @property
    def p50(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[49]

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]


async def _run(host: str, port: int, path: str, rate: float, seconds: float) -> Result:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    idle: collections.deque[_Connection] = collections.deque()
    for _ in range(_CONNECTIONS):
        idle.append(_Connection(*await asyncio.open_connection(host, port)))
    latencies: list[float] = []
    errors = late = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        nonlocal errors
        connection = idle.popleft() if idle else None
        if connection is None:
            connection = _Connection(*await asyncio.open_connection(host, port))
        status = await connection.get(request)
        latencies.append((time.perf_counter() - due) * 1000)
        errors += status != 200
        idle.append(connection)

    interval = 1 / rate
    start = time.perf_counter() + 0.05
    for n in range(int(rate * seconds)):
        due = start + n * interval
        pause = due - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        elif pause < -0.001:
            late += 1  # the client itself could not keep the pace: counted against it
        task = asyncio.create_task(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    for connection in idle:
        connection.writer.close()
    return Result(latencies, errors, late)


def measure(port: int, path: str, rate: float, seconds: float, pids: list[int]) -> Result:
    """A warm-up second at the rate, then the run; CPU per request of `pids` over the run."""
    run = _runner()
    run(_run("127.0.0.1", port, path, rate, 1.0))
    before = sum(cpu_seconds(pid) for pid in pids)
    result = run(_run("127.0.0.1", port, path, rate, seconds))
    result.cpu_ms = (sum(cpu_seconds(pid) for pid in pids) - before) * 1000 / len(result.latencies)
    return result


def _runner() -> Callable[[Coroutine[Any, Any, Result]], Result]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _workers(pid: int) -> list[int]:
    """The baseline's worker processes (not multiprocessing's resource tracker)."""
    return [
        child
        for child in children(pid)
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(
        f"fixed rate {args.rate:g} req/s, open-loop, {args.seconds:g} s each "
        f"(after a 1 s warm-up), 2 workers each"
    )
    function = HERE / "functions" / "bench"
    result = build(function)
    rows: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=2)
        baseline, port = start_baseline("baseline_app:app", "/bench/")
        try:
            rows["fastapi"] = measure(
                port, "/bench/", args.rate, args.seconds, _workers(baseline.pid)
            )
            # One gateway, restarted with instances made ahead off: the function
            # deployed once, its compiled artifact in the data directory.
            for label, ahead in (("edgefn fresh", "2"), ("edgefn fresh, none ahead", "0")):
                gateway.extra_env = {"EDGEFN_AHEAD_INSTANCES": ahead}
                gateway.start()
                if ahead == "2":
                    gateway.admin(
                        "POST",
                        "/v1/functions",
                        data={"manifest": (function / "edgefn.toml").read_text()},
                        files={"component": ("bench.wasm", result.path.read_bytes())},
                    ).raise_for_status()
                gateway.wait_serving("bench")
                rows[label] = measure(
                    gateway.port, "/bench/", args.rate, args.seconds, worker_pids(gateway)
                )
                gateway.stop()
        finally:
            gateway.stop()
            baseline.terminate()
            baseline.wait()
    print(f"{'':26} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for label, row in rows.items():
        print(
            f"{label:26} {len(row.latencies):8} {row.p50:8.2f} {row.p99:8.2f} "
            f"{row.cpu_ms:11.3f}"
            + (f"   {row.errors} errors" if row.errors else "")
            + (f"   {row.late} sent late" if row.late else "")
        )
    native, fresh, before = rows["fastapi"], rows["edgefn fresh"], rows["edgefn fresh, none ahead"]
    print(
        f"CPU per fresh request: {before.cpu_ms:.3f} ms without instances made ahead, "
        f"{fresh.cpu_ms:.3f} ms with them"
    )
    rate = f"{args.rate:g} req/s"
    verdict(
        f"fresh p50 within 1 ms of FastAPI at {rate}",
        f"{fresh.p50:.2f} ms vs {native.p50:.2f} ms (+{fresh.p50 - native.p50:.2f} ms; "
        f"none ahead: {before.p50:.2f} ms)",
        "<= +1 ms",
        fresh.p50 - native.p50 <= 1.0,
    )
    verdict(
        f"fresh p99 <= 3x FastAPI's at {rate}",
        f"{fresh.p99:.2f} ms vs {native.p99:.2f} ms ({fresh.p99 / native.p99:.2f}x; "
        f"none ahead: {before.p99 / native.p99:.2f}x)",
        "<= 3x",
        fresh.p99 <= 3 * native.p99,
    )


if __name__ == "__main__":
    main()
