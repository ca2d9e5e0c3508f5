"""Start a native baseline app (bench/baseline_*.py) with 2 uvicorn workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def start_baseline(app: str, port: int, ready_path: str) -> subprocess.Popen[bytes]:
    """`app` as "module:attribute"; returns once `ready_path` answers."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(command, cwd=HERE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}{ready_path}")
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise TimeoutError(f"{app} did not start")
