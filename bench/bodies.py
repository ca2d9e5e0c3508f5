"""Request bodies under load: 100 concurrent 25 MiB uploads against one worker.

Through `edgefn serve --workers 1` with default settings, the hostile test
function's `/length` (reads its body, answers its length) allowed a 25 MiB body
and 128 MiB of memory; `hello` is probed meanwhile. Prints what the uploads got
(200, 503 `overloaded`, or a connection closed after an early answer), the
worker's RSS before and at its peak, and the probe latencies.

    python bench/bodies.py [--uploads 100] [--size-mib 25] [--budget 256MiB]
        [--concurrency N] [--runs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from gateway_process import GatewayProcess, cli  # noqa: E402
from uploads import storm  # noqa: E402

ROOT = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--size-mib", type=int, default=25)
    parser.add_argument("--budget", help="backpressure.body_budget (default: the gateway's)")
    parser.add_argument("--concurrency", help="the function's concurrency (default: the gateway's)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    env = {"EDGEFN_BACKPRESSURE_BODY_BUDGET": args.budget} if args.budget else {}
    with tempfile.TemporaryDirectory() as temp:
        # One worker, serving in the gateway's own process: every upload lands in it.
        gateway = GatewayProcess(Path(temp) / "data", workers=1, extra_env=env).start()
        try:
            for directory in (ROOT / "functions" / "hello", ROOT / "tests/functions/hostile"):
                deployed = cli(gateway, "deploy", str(directory))
                assert deployed.exit_code == 0, deployed.output
            size = f"{args.size_mib}MiB"
            limits = ["--max-body", size, "--memory", "128MiB"]
            if args.concurrency:
                limits += ["--concurrency", args.concurrency]
            limited = cli(gateway, "limits", "hostile", *limits)
            assert limited.exit_code == 0, limited.output
            assert gateway.process is not None
            worker = gateway.process.pid
            for run in range(args.runs):
                result = storm(
                    gateway.port,
                    worker,
                    "/hostile/length",
                    gateway.public_url + "/hello/",
                    count=args.uploads,
                    size=args.size_mib * 2**20,
                )
                print(f"run {run + 1}: {args.uploads} x {size}: {result.summary()}", flush=True)
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
