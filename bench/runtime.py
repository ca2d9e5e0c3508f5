"""Runtime benchmark: `Sandbox.invoke` for a trivial function, and body throughput.

Run with `make bench`. Every figure is printed beside a native baseline measured
in the same run: the same `App` called in-process through `edgefn.testing`.

Targets (issue 2): >= 700 requests/s on one core with a fresh instance per
request; >= 200 MB/s for a 10 MB body in each direction.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from edgefn.testing import TestClient, load_app
from edgefn_platform import build
from edgefn_runtime import Engine, Limits, Request

FUNCTION = Path(__file__).parent / "functions" / "bench"
BODY = 10 * 1024 * 1024
LIMITS = Limits(max_body=16 * 1024 * 1024, max_response=16 * 1024 * 1024)


def rate(call: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls per second of `call`, run for about `seconds`."""
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call()
        count += 1
    return count / elapsed, count


def best_seconds(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    result = build(FUNCTION)
    with Engine() as engine:
        sandbox = engine.load(result.path)
        native = TestClient(load_app(FUNCTION))
        hello = Request("GET", "/")
        for _ in range(50):  # warm up
            sandbox.invoke(hello, LIMITS)

        wasm_rps, count = rate(lambda: sandbox.invoke(hello, LIMITS), 5.0)
        native_rps, _ = rate(lambda: native.get("/"), 1.0)
        outcomes = [sandbox.invoke(hello, LIMITS) for _ in range(500)]
        instantiate = statistics.median(o.usage.instantiate_seconds for o in outcomes) * 1000
        execute = statistics.median(o.usage.execute_seconds for o in outcomes) * 1000
        fuel = outcomes[0].usage.fuel

        fib = Request("GET", "/fib", "n=25")
        fib_wasm = best_seconds(lambda: sandbox.invoke(fib, LIMITS))
        fib_fuel = sandbox.invoke(fib, LIMITS).usage.fuel
        fib_native = best_seconds(lambda: native.get("/fib?n=25"))

        payload = b"\xab" * BODY
        size = f"size={BODY}"
        body_in = best_seconds(
            lambda: sandbox.invoke(Request("POST", "/sink", body=payload), LIMITS)
        )
        body_out = best_seconds(lambda: sandbox.invoke(Request("GET", "/source", size), LIMITS))
        native_in = best_seconds(lambda: native.post("/sink", body=payload))
        native_out = best_seconds(lambda: native.get(f"/source?{size}"))

    mb = BODY / 1e6
    print(f"hello, Sandbox.invoke, one thread, fresh instance per request ({count} requests)")
    print(f"  edgefn   {wasm_rps:8.0f} req/s   (target >= 700)")
    print(f"  native   {native_rps:8.0f} req/s   ratio {wasm_rps / native_rps:.4f}")
    print(f"  median instantiate {instantiate:.3f} ms, execute {execute:.3f} ms, fuel {fuel:,}")
    print("pure Python CPU work, fib(25) (best of 5, whole request)")
    print(
        f"  edgefn {fib_wasm * 1000:7.1f} ms   native {fib_native * 1000:7.1f} ms"
        f"   ratio {fib_wasm / fib_native:.2f}"
    )
    print(
        f"  fuel {fib_fuel:,}: one billion fuel units is about "
        f"{fib_wasm / fib_fuel * 1e12:.0f} ms of guest Python"
    )
    print(f"body throughput, {BODY // 2**20} MiB (best of 5, whole request)")
    print(
        f"  in   edgefn {mb / body_in:7.0f} MB/s   native {mb / native_in:7.0f} MB/s"
        f"   ratio {native_in / body_in:.3f}   (target >= 200 MB/s)"
    )
    print(
        f"  out  edgefn {mb / body_out:7.0f} MB/s   native {mb / native_out:7.0f} MB/s"
        f"   ratio {native_out / body_out:.3f}   (target >= 200 MB/s)"
    )


if __name__ == "__main__":
    main()
