"""What one key-value operation costs a function, without a gateway or a
database: `store.set` and `store.get` of a 100 B and a 1 MiB value through the
sandbox (tests/functions/state `/timing`) with an in-memory backend
(tests/kv_memory.py), against `kv.open`, a host call that asks no backend. Each
call is timed inside the function; the figures are the boundary, the value's
crossing (stdout out, /.edgefn/kv in) and the host's checks.

    python bench/kv_sandbox.py [--runs 5] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from kv_memory import MemoryBackend  # noqa: E402

from edgefn_platform import build  # noqa: E402
from edgefn_runtime import Engine, Limits, Request  # noqa: E402
from edgefn_runtime.capabilities import installed  # noqa: E402

STATE = HERE.parent / "tests" / "functions" / "state"
MiB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    result = build(STATE)
    limits = replace(
        Limits(), max_kv_ops=100_000, timeout=60, fuel=50_000_000_000, max_kv_value=MiB
    )
    backend = MemoryBackend()
    with Engine(capabilities=installed(kv=backend)) as engine:
        sandbox = engine.load(result.path, grants=result.manifest.grants(), reuse=1000)
        print(f"{args.runs} runs of {args.calls} calls each; p50 / p99 in microseconds")
        print(f"{'size':>8}  {'op':<5} " + "  ".join(f"run {i + 1:<9}" for i in range(args.runs)))
        for size in (100, MiB):
            # 1 MiB values: fewer calls, so a run's values fit the request's stdout room.
            calls = args.calls if size < MiB else min(args.calls, 20)
            runs: dict[str, list[str]] = {"set": [], "get": [], "open": []}
            for _ in range(args.runs):
                backend.data.clear()
                outcome = sandbox.invoke(
                    Request("GET", "/timing", f"n={calls}&size={size}"), limits
                )
                times = json.loads(outcome.response.body)
                for op in runs:
                    cuts = statistics.quantiles(times[op], n=100)
                    runs[op].append(f"{cuts[49] * 1e6:.0f} / {cuts[98] * 1e6:.0f}")
            for op, figures in runs.items():
                label = "100 B" if size == 100 else "1 MiB"
                print(f"{label:>8}  {op:<5} " + "  ".join(f"{f:<13}" for f in figures))


if __name__ == "__main__":
    main()
