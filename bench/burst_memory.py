"""Memory after a burst: each worker's RSS 1, 5 and 10 s after 200 requests in flight.

Through `edgefn serve --workers 2`, the burst of `bench/inflight.py` (200
requests at once, 64 MiB limit, each holding 16 MiB of guest memory for
300 ms), twice: with the memory release off (`EDGEFN_MEMORY_RELEASE_AFTER=0`,
the baseline) and on (the default). Then the steady state's cost: hello
(fresh instances) req/s through each of the two gateways, wrk, runs
alternating, each after 2 s of load timed apart (the first requests after an idle
spell). Prints a `verdict` for "each worker back within 150 MB of its
idle RSS within 10 s" and for "steady state no more than 5 % slower".

    python bench/burst_memory.py [--requests 200] [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from _targets import verdict  # noqa: E402
from gateway import deploy, load_python, load_wrk  # noqa: E402
from inflight import MANIFEST, SETTINGS, burst, rss_mb, workers  # noqa: E402

from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402

MARGIN_MB = 150
AFTER = (1, 5, 10)
# Load before each timed steady run, itself timed apart: the first requests
# after an idle spell (in which the release-on gateway gave its memory back).
WARM_SECONDS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="steady-state runs per gateway")
    parser.add_argument("--seconds", type=int, default=5, help="length of each steady run")
    args = parser.parse_args()
    load = load_wrk if shutil.which("wrk") else load_python
    component = build(HERE / "functions" / "bench").path.read_bytes()
    modes = {"release off": {"EDGEFN_MEMORY_RELEASE_AFTER": "0"}, "release on": {}}
    with tempfile.TemporaryDirectory() as temp:
        gateways = {
            label: GatewayProcess(
                Path(temp) / label.replace(" ", "-"), workers=2, extra_env={**SETTINGS, **env}
            )
            for label, env in modes.items()
        }
        try:
            memory = {}
            for label, gateway in gateways.items():
                gateway.start()
                deploy(gateway, MANIFEST, component)
                gateway.wait_serving("bench")
                memory[label] = measure_burst(gateway, args.requests)
            steady: dict[str, list[float]] = {label: [] for label in gateways}
            after_idle: dict[str, list[float]] = {label: [] for label in gateways}
            for _ in range(args.runs):
                for label, gateway in gateways.items():
                    url = f"{gateway.public_url}/bench/"
                    # Apart first: an idle gateway gave its memory back since its
                    # last run, and the first requests after that refill emptied
                    # slots (not the steady state; printed on their own).
                    after_idle[label].append(load(url, WARM_SECONDS, 50).rps)
                    steady[label].append(load(url, args.seconds, 50).rps)
        finally:
            for gateway in gateways.values():
                gateway.stop()
    print(
        f"{args.requests} requests in flight (64 MiB limit, 16 MiB held 300 ms each), "
        "worker RSS in MB:"
    )
    print(f"  {'':12} {'idle':>6} {'peak':>6} " + " ".join(f"{f'+{t}s':>6}" for t in AFTER))
    worst = {}
    for label, (statuses, rows) in memory.items():
        print(f"  {label}: statuses {statuses}")
        for pid, (idle, peak, later) in rows.items():
            print(
                f"  worker {pid:<5} {idle:6.0f} {peak:6.0f} " + " ".join(f"{r:6.0f}" for r in later)
            )
        worst[label] = max(later[-1] - idle for idle, _, later in rows.values())
    for label, values in steady.items():
        print(f"  hello (fresh), {label}: " + ", ".join(f"{v:.0f}" for v in values) + " req/s")
    for label, values in after_idle.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  its first {WARM_SECONDS} s after idle, {label}: {runs} req/s")
    ratio = statistics.median(steady["release on"]) / statistics.median(steady["release off"])
    verdict(
        "each worker's RSS 10 s after a burst of 200, over its idle RSS",
        f"+{worst['release on']:.0f} MB (release off, same run: +{worst['release off']:.0f} MB)",
        f"<= +{MARGIN_MB} MB",
        worst["release on"] <= MARGIN_MB,
    )
    verdict(
        "steady state (hello, fresh) with the release on, vs off",
        f"{ratio:.2f}x req/s (medians of {args.runs} alternating runs)",
        ">= 0.95x",
        ratio >= 0.95,
    )


def measure_burst(
    gateway: GatewayProcess, requests: int
) -> tuple[dict[int, int], dict[int, tuple[float, float, list[float]]]]:
    """Idle RSS per worker, the burst, then VmHWM and RSS at each of `AFTER` seconds."""
    time.sleep(1.5)  # past the deploy's own work
    pids = workers(gateway)
    idle = {pid: rss_mb(pid, "VmRSS") for pid in pids}
    statuses, _ = burst(f"{gateway.public_url}/bench/hold?mb=16&ms=300", requests)
    ended = time.monotonic()
    peak = {pid: rss_mb(pid, "VmHWM") for pid in pids}
    later: dict[int, list[float]] = {pid: [] for pid in pids}
    for seconds in AFTER:
        time.sleep(max(0.0, ended + seconds - time.monotonic()))
        for pid in pids:
            later[pid].append(rss_mb(pid, "VmRSS"))
    return dict(statuses), {pid: (idle[pid], peak[pid], later[pid]) for pid in pids}


if __name__ == "__main__":
    main()
