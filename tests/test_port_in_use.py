"""`edgefn serve` on a port another process holds: one line, exit code 1, no
traceback, even when the holder is a listening SO_REUSEPORT socket of the same
user (such as a worker an earlier gateway left behind), which a shared bind
would silently join."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import attacks
from gateway_process import ROOT

_HOLDER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(sock.getsockname()[1], flush=True)
    sys.stdin.read()  # until the test closes our stdin
    """
)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port a process of this user listens on with SO_REUSEPORT."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        yield int(holder.stdout.readline())
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("option", ["--port", "--admin-port"])
def test_serve_refuses_a_port_held_by_a_reuseport_listener(
    tmp_path: Path, held_port: int, option: str
) -> None:
    ports = {"--port": "0", "--admin-port": "0", option: str(held_port)}
    command = [
        sys.executable, "-m", "edgefn_platform", "serve", "--host", "127.0.0.1",
        "--workers", "1", "--data-dir", str(tmp_path / "data"), "--token", "a-real-token",
        *(item for pair in ports.items() for item in pair),
    ]  # fmt: skip
    env = {**os.environ, "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn")}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired as exc:  # it served: the port was shared
        raise AssertionError(f"serve did not refuse port {held_port}") from exc
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"Error: cannot listen on 127.0.0.1:{held_port} (Address already in use); "
        f"choose another {option} (0: any free port) or stop what uses it\n"
    )
    attacks.record(
        "Ports held by other processes (tests/test_port_in_use.py)",
        f"start a gateway whose {option} another process of the same user listens on "
        "with SO_REUSEPORT (an orphaned worker)",
        "refused at start, one line, exit code 1: the port is never shared",
    )
