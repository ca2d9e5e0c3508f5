"""Start a native baseline app (bench/baseline_*.py) with 2 uvicorn workers."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from waiting import wait_until  # noqa: E402


def start_baseline(app: str, ready_path: str) -> tuple[subprocess.Popen[bytes], int]:
    """`app` as "module:attribute", on a loopback port this process binds and hands
    to uvicorn (`--fd`), so no other process can take it meanwhile; returns the
    process and its port once `ready_path` answers."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        port = int(sock.getsockname()[1])
        command = [sys.executable, str(HERE / "baseline_server.py"), app, str(sock.fileno())]
        process = subprocess.Popen(command, cwd=HERE, pass_fds=[sock.fileno()])

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{app} exited with {process.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{ready_path}")
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=30, interval=0.1, message=f"{app} to start")
    except BaseException:
        process.terminate()
        process.wait()
        raise
    return process, port
