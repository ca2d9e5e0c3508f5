"""Runtime benchmark: `Sandbox.invoke` for a trivial function, and body throughput.

Run with `make bench`. Figures are printed beside a native baseline measured in
the same run: the same `App` called in-process through `edgefn.testing`.

Targets (issue 6): hello >= 1,000 requests/s per core with a fresh instance per
request and >= 2,000/s with `reuse`; a 10 MB body echoed at >= 300 MB/s each way.
"Per core" divides by the CPU time the process used, so work that wasmtime or
the kernel does on another thread is counted too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from edgefn.testing import TestClient, load_app
from edgefn_platform import build
from edgefn_runtime import Engine, Limits, Request, Sandbox

FUNCTION = Path(__file__).parent / "functions" / "bench"
BODY = 10 * 1024 * 1024
LIMITS = Limits(max_body=16 * 1024 * 1024, max_response=16 * 1024 * 1024)
HELLO = Request("GET", "/")


def rate(call: Callable[[], object], seconds: float) -> tuple[float, float, int]:
    """Calls per wall-clock second and per CPU second of `call`, run for `seconds`."""
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        count += 1
    return count / elapsed, count / (time.process_time() - cpu), count


def best_seconds(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def hello_rate(sandbox: Sandbox, label: str, target: int, native: float) -> None:
    for _ in range(50):  # warm up
        sandbox.invoke(HELLO, LIMITS)
    wall, per_core, count = rate(lambda: sandbox.invoke(HELLO, LIMITS), 5.0)
    outcomes = [sandbox.invoke(HELLO, LIMITS) for _ in range(500)]
    instantiate = statistics.median(o.usage.instantiate_seconds for o in outcomes) * 1000
    execute = statistics.median(o.usage.execute_seconds for o in outcomes) * 1000
    print(f"hello, Sandbox.invoke, one thread, {label} ({count} requests)")
    print(
        f"  edgefn {per_core:8.0f} req/s per core ({wall:.0f}/s wall clock)   "
        f"target >= {target}   {'met' if per_core >= target else 'NOT MET'}"
    )
    print(f"  native {native:8.0f} req/s   ratio {per_core / native:.4f}")
    print(
        f"  median instantiate {instantiate:.3f} ms, execute {execute:.3f} ms, "
        f"fuel {outcomes[-1].usage.fuel:,}"
    )


def main() -> None:
    result = build(FUNCTION)
    with Engine() as engine:
        fresh = engine.load(result.path)
        reused = engine.load(result.path, reuse=1000)
        native = TestClient(load_app(FUNCTION))
        native_rps, _, _ = rate(lambda: native.get("/"), 1.0)
        hello_rate(fresh, "a fresh instance per request", 1000, native_rps)
        hello_rate(reused, "reuse = 1000", 2000, native_rps)

        fib = Request("GET", "/fib", "n=25")
        fib_wasm = best_seconds(lambda: fresh.invoke(fib, LIMITS))
        fib_fuel = fresh.invoke(fib, LIMITS).usage.fuel
        fib_native = best_seconds(lambda: native.get("/fib?n=25"))

        payload = bytes(range(256)) * (BODY // 256)
        echo = Request("POST", "/echo", body=payload)
        echoed = fresh.invoke(echo, LIMITS).response.body
        assert echoed == payload, "the echo came back different"
        body_echo = best_seconds(lambda: fresh.invoke(echo, LIMITS))
        body_echo_reused = best_seconds(lambda: reused.invoke(echo, LIMITS))
        native_echo = best_seconds(lambda: native.post("/echo", body=payload))

    print("pure Python CPU work, fib(25) (best of 5, whole request)")
    print(
        f"  edgefn {fib_wasm * 1000:7.1f} ms   native {fib_native * 1000:7.1f} ms"
        f"   ratio {fib_wasm / fib_native:.2f}"
    )
    print(
        f"  fuel {fib_fuel:,}: one billion fuel units is about "
        f"{fib_wasm / fib_fuel * 1e12:.0f} ms of guest Python"
    )
    mb = BODY / 1e6
    print(f"body echo, {BODY // 2**20} MiB in and the same out (best of 5, whole request)")
    for label, seconds in (("fresh", body_echo), ("reuse", body_echo_reused)):
        speed = mb / seconds
        print(
            f"  {label:6} {seconds * 1000:6.1f} ms = {speed:5.0f} MB/s each way   "
            f"target >= 300   {'met' if speed >= 300 else 'NOT MET'}"
        )
    print(f"  native (in process, no copies) {native_echo * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
