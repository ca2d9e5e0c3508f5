"""Workers die with their supervisor, however it dies (`edgefn serve`, `edgefn dev`)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from gateway_process import GatewayProcess, children, start_dev
from waiting import wait_until

AREA = "Process supervision (tests/test_supervisor.py)"


def write_function(directory: Path, answer: str) -> Path:
    directory.mkdir()
    (directory / "edgefn.toml").write_text(f'name = "{directory.name}"\n')
    (directory / "app.py").write_text(
        f"from edgefn import App\napp = App()\napp.get('/')(lambda request: {answer!r})\n"
    )
    return directory


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Poll until none of `pids` runs or `seconds` pass; the ones still running."""
    running: list[int] = []

    def gone() -> bool:
        running[:] = [pid for pid in pids if alive(pid)]
        return not running

    try:
        wait_until(gone, timeout=seconds, message=f"processes {pids} to exit")
    except AssertionError:
        pass  # the caller asserts on what still runs
    return running


def port_free(port: int) -> bool:
    """Whether a listener can take `port` without SO_REUSEPORT (nothing listens on it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "data", workers=2).start()
    try:
        yield process
    finally:
        process.stop()


def test_sigkill_of_the_supervisor_takes_its_workers_down(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    started = children(gateway.process.pid)  # both workers and multiprocessing's tracker
    assert len(started) >= 2
    try:
        gateway.process.kill()
        killed = time.monotonic()
        gateway.process.wait()
        survivors = wait_gone(started, 2.0)
        assert survivors == [], f"alive {time.monotonic() - killed:.1f} s after: {survivors}"
        assert port_free(gateway.port) and port_free(gateway.admin_port)
    finally:
        kill_all(started)
    attacks.record(
        AREA,
        "`kill -9` the `edgefn serve` supervisor (2 workers)",
        "every worker exits at once (PR_SET_PDEATHSIG); within 2 s no process it started "
        "runs and both ports take a new listener without SO_REUSEPORT",
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_edgefn_dev_takes_its_worker_down(tmp_path: Path, signum: int) -> None:
    directory = write_function(tmp_path / "devfn", "up")
    process, port = start_dev(directory, tmp_path / "dev.log")
    started: list[int] = []
    try:

        def serves() -> bool:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()
            return _answers(f"http://127.0.0.1:{port}/devfn/", "up")

        wait_until(serves, timeout=60, interval=0.1, message="edgefn dev to serve")
        started = children(process.pid)
        process.send_signal(signum)
        process.wait(timeout=15)
        assert wait_gone(started, 2.0) == []
        assert port_free(port)
    finally:
        process.kill()
        process.wait()
        kill_all(started)
    if signum == signal.SIGKILL:
        attacks.record(
            AREA,
            "`kill -9` an `edgefn dev` session",
            "its worker exits at once; the port is free within 2 s",
        )


def _answers(url: str, text: str) -> bool:
    try:
        return httpx.get(url, timeout=5).text == text
    except httpx.HTTPError:
        return False
