"""Workers die with their supervisor, however it dies (`edgefn serve`, `edgefn dev`)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from gateway_process import GatewayProcess, children, ended, running, start_dev, worker_pids
from waiting import wait_until

AREA = "Process supervision (tests/test_supervisor.py)"


def write_function(directory: Path, answer: str) -> Path:
    directory.mkdir()
    (directory / "edgefn.toml").write_text(f'name = "{directory.name}"\n')
    (directory / "app.py").write_text(
        f"from edgefn import App\napp = App()\napp.get('/')(lambda request: {answer!r})\n"
    )
    return directory


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Poll until none of `pids` runs or `seconds` pass; the ones still running."""
    left: list[int] = []

    def gone() -> bool:
        left[:] = [pid for pid in pids if running(pid)]
        return not left

    try:
        wait_until(gone, timeout=seconds, message=f"processes {pids} to exit")
    except AssertionError:
        pass  # the caller asserts on what still runs
    return left


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


def listeners(port: int) -> list[int]:
    """The processes with a socket listening on loopback `port` (TCP, IPv4)."""
    inodes = {
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A"  # 0A: LISTEN
    }
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.append(int(fd.parent.parent.name))
    return sorted(found)


def _listened_by(port: int, pids: list[int]) -> bool:
    return listeners(port) == pids


def test_port_0_is_picked_once_printed_and_served_by_every_worker(
    gateway: GatewayProcess,
) -> None:
    assert gateway.process is not None
    printed = gateway.log.read_text().splitlines()
    assert printed.count(f"edgefn: public http://127.0.0.1:{gateway.port}") == 1
    assert printed.count(f"edgefn: admin http://127.0.0.1:{gateway.admin_port}") == 1
    workers = sorted(worker_pids(gateway))
    assert len(workers) == 2
    # Both workers listen on the one port the supervisor picked (a worker joins
    # the public port once it has warmed its functions, so wait for it); the
    # supervisor holds it bound, not listening, so no connection waits in its queue ...
    for port in (gateway.port, gateway.admin_port):
        wait_until(
            functools.partial(_listened_by, port, workers),
            message=f"both workers {workers} to listen on {port}",
        )
        # ... and nothing else can take it while the gateway runs.
        assert not port_free(port)


@pytest.fixture(scope="module")
def built_devfn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A function the signal tests share (`edgefn dev` builds nothing but the dev
    runner, once per checkout)."""
    return write_function(tmp_path_factory.mktemp("built") / "devfn", "up")


def test_kill_9_of_edgefn_dev_takes_its_worker_down(tmp_path: Path, built_devfn: Path) -> None:
    # SIGTERM and Ctrl-C: test_edgefn_dev_stops_cleanly_on_sigterm_as_on_ctrl_c.
    process, port = start_dev(built_devfn, tmp_path / "dev.log")
    started: list[int] = []
    try:

        def serves() -> bool:
            assert process.poll() is None, (tmp_path / "dev.log").read_text()
            return _answers(f"http://127.0.0.1:{port}/devfn/", "up")

        wait_until(serves, timeout=60, interval=0.1, message="edgefn dev to serve")
        started = children(process.pid)
        process.kill()
        process.wait(timeout=15)
        assert wait_gone(started, 2.0) == []
        # Its last thread closes the socket after the leader shows as a zombie:
        # unmapping a wasmtime worker's memory reservations takes a moment.
        wait_until(lambda: port_free(port), timeout=2.0, message=f"port {port} to be free")
    finally:
        process.kill()
        process.wait()
        kill_all(started)
    attacks.record(
        AREA,
        "`kill -9` an `edgefn dev` session",
        "its worker exits at once; the port is free within 2 s",
    )


@pytest.mark.parametrize("when", ["starting", "serving"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_edgefn_dev_stops_cleanly_on_sigterm_as_on_ctrl_c(
    tmp_path: Path, signum: int, when: str, built_devfn: Path
) -> None:
    """Exit 0, the worker gone, the port free and the data directory removed, whether
    the signal comes as it starts (its port just bound) or while serving."""
    scratch = tmp_path / "tmp"  # where dev's data directory goes (TMPDIR)
    scratch.mkdir()
    log = tmp_path / "dev.log"
    process, port = start_dev(built_devfn, log, env={"TMPDIR": str(scratch)})
    with ended(process):
        assert len(list(scratch.glob("edgefn-dev-*"))) == 1  # its data directory is here
        if when == "serving":
            wait_until(
                lambda: _answers(f"http://127.0.0.1:{port}/devfn/", "up"),
                timeout=60,
                interval=0.1,
                message="edgefn dev to serve",
            )
        started = children(process.pid)
        process.send_signal(signum)
        assert process.wait(timeout=30) == 0, log.read_text()
    assert wait_gone(started, 2.0) == []
    assert port_free(port)  # stopped, not killed: it closed its sockets before exiting
    assert list(scratch.iterdir()) == []
    assert "Traceback" not in log.read_text()


def _answers(url: str, text: str) -> bool:
    try:
        return httpx.get(url, timeout=5).text == text
    except httpx.HTTPError:
        return False
