"""Image bombs against the shipped examples: status, seconds and peak memory.

Each bomb (tests/images.py `image_bombs`) is a small request whose image work,
if the host did it before charging it, would cost the gateway gigabytes or
many seconds. Through `edgefn serve --workers 1` (so the one process measured
is the one doing the work), each is sent `--repeat` times; printed per bomb:
the status and code, the slowest answer against the function's timeout, and the
worker's peak RSS growth (VmHWM, reset before each request) against the
function's memory limit. Not part of `make test` (tests/test_image_bombs.py
asserts the same bounds once each).

    python bench/hostile_images.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from gateway_process import GatewayProcess, cli, reset_peak_rss, rss  # noqa: E402
from images import image_bombs  # noqa: E402

MiB = 2**20
MEMORY_LIMIT, TIMEOUT = 128 * MiB, 5.0  # functions/*/edgefn.toml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="requests per bomb (default 3)")
    args = parser.parse_args()
    bombs = image_bombs()
    with tempfile.TemporaryDirectory() as temp:
        gateway = GatewayProcess(Path(temp) / "data", workers=1)
        try:
            gateway.start()
            for name in ("image_resize", "watermark"):
                result = cli(gateway, "deploy", str(ROOT / "functions" / name))
                if result.exit_code != 0:
                    sys.exit(result.output)
            assert gateway.process is not None
            pid = gateway.process.pid
            print(f"{'bomb':56} {'answer':24} {'max s':>6} {'/timeout':>8} {'peak MB':>8} "
                  f"{'/limit':>7}")  # fmt: skip
            for bomb in bombs:
                answers, slowest, peak = set(), 0.0, 0
                for _ in range(args.repeat):
                    before = reset_peak_rss(pid)
                    started = time.perf_counter()
                    response = httpx.post(
                        gateway.public_url + bomb.path, content=bomb.body, timeout=120
                    )
                    slowest = max(slowest, time.perf_counter() - started)
                    peak = max(peak, rss(pid, "VmHWM") - before)
                    error = response.json().get("error", {}) if response.status_code >= 400 else {}
                    answers.add(f"{response.status_code} {error.get('code', '')}".strip())
                print(
                    f"{bomb.name[:56]:56} {', '.join(sorted(answers)):24} {slowest:6.2f} "
                    f"{slowest / TIMEOUT:8.2f} {peak / MiB:8.0f} {peak / MEMORY_LIMIT:7.2f}"
                )
        finally:
            gateway.stop()


if __name__ == "__main__":
    main()
