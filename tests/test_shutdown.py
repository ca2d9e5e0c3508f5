"""Stopping `edgefn serve`: SIGTERM with several workers, a drain timeout that expires
with a request still running, and a supervisor backing off from a worker that dies
every time it starts."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from edgefn_platform._crash import WORKER_START
from gateway_process import (
    ROOT,
    GatewayProcess,
    children,
    cli,
    cpu_seconds,
    listening_ports,
    running,
    tail,
)
from waiting import wait_until

HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
AREA = "Process supervision (tests/test_shutdown.py)"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "data", workers=2)
    try:
        yield process
    finally:
        if process.process is not None:
            process.stop()


def test_sigterm_with_two_workers_exits_0_and_takes_every_worker_down(
    gateway: GatewayProcess,
) -> None:
    gateway.start()
    assert gateway.process is not None
    workers = children(gateway.process.pid)
    assert len(workers) >= 2  # both workers, and multiprocessing's resource tracker
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=30) == 0, tail(gateway.log)
    wait_until(
        lambda: not any(running(pid) for pid in workers),
        timeout=5,
        message=lambda: f"workers {[p for p in workers if running(p)]} to exit",
    )
    assert "Traceback" not in gateway.log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_expired_drain_timeout_cuts_a_slow_request_off_and_says_so(
    tmp_path: Path, workers: int
) -> None:
    drain = 1.0
    gateway = GatewayProcess(
        tmp_path / "data", workers=workers, extra_env={"EDGEFN_DRAIN_TIMEOUT": str(drain)}
    ).start()
    try:
        assert cli(gateway, "deploy", str(HOSTILE)).exit_code == 0
        assert cli(gateway, "limits", "hostile", "--timeout", "30s").exit_code == 0
        gateway.wait_serving("hostile")
        answers: list[httpx.Response | Exception] = []

        def slow() -> None:
            try:
                answers.append(
                    httpx.get(gateway.public_url + "/hostile/sleep?seconds=25", timeout=60)
                )
            except httpx.HTTPError as exc:
                answers.append(exc)

        thread = threading.Thread(target=slow)
        thread.start()
        try:
            wait_until(
                lambda: gateway.metric("edgefn_in_flight", function="hostile") >= 1,
                message="the slow request to be running",
            )
            assert gateway.process is not None
            workers_before = children(gateway.process.pid)
            offset = gateway.log.stat().st_size
            signalled = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            code = gateway.process.wait(timeout=40)
            took = time.monotonic() - signalled
        finally:
            thread.join()
        # The listeners close at once (the tests' shutdown delay is 0), then the
        # request gets the drain timeout; the guest's sleep (25 s) does not hold the
        # gateway up.
        margin = 5.0
        assert code == 0 and took < drain + margin, f"exit {code} after {took:.1f} s"
        said = tail(gateway.log, offset, lines=200)
        assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in said, said
        assert "Traceback" not in said and "Exception in ASGI application" not in said, said
        (answer,) = answers
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "shutting_down"
        wait_until(
            lambda: not any(running(pid) for pid in workers_before),
            timeout=5,
            message=lambda: f"workers {[p for p in workers_before if running(p)]} to exit",
        )
    finally:
        gateway.stop()
    attacks.record(
        AREA,
        f"SIGTERM with a 25 s request in flight and --drain-timeout 1 ({workers} worker(s))",
        f"the request is cut off once the drain timeout expires (logged); the gateway exits 0 "
        f"{took:.1f} s after the signal",
    )


def test_a_worker_that_dies_as_it_starts_is_restarted_with_backoff(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "edgefn_platform", "serve", "--host", "127.0.0.1",
        "--port", "0", "--admin-port", "0", "--data-dir", str(tmp_path / "data"),
        "--workers", "2",
    ]  # fmt: skip
    env = {
        **os.environ,
        "EDGEFN_TOKEN": "t",
        "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn"),
        "EDGEFN_CRASH_AT": WORKER_START,
    }
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    restart = re.compile(
        r"worker \d+ \(slot (\d)\) exited with -9 after [\d.]+ s; "
        r"starting a new one in ([\d.]+) s"
    )

    def delays_by_slot() -> dict[str, list[float]]:
        slots: dict[str, list[float]] = {"0": [], "1": []}
        for slot, delay in restart.findall(log.read_text()):
            slots[slot].append(float(delay))
        return slots

    try:
        listening_ports(log, 0, process)  # printed before the first workers start
        cpu, started = cpu_seconds(process.pid), time.monotonic()
        delays = wait_until(
            lambda: (found := delays_by_slot()) and min(map(len, found.values())) >= 3 and found,
            timeout=90,
            message=lambda: f"three worker restarts in each slot in {tail(log)}",
        )
        spent, took = cpu_seconds(process.pid) - cpu, time.monotonic() - started
        # Each of the two slots waits 0.5, 1, then 2 s: the restarts slow down.
        assert [found[:3] for found in delays.values()] == [[0.5, 1.0, 2.0]] * 2, delays
        # The supervisor itself sleeps meanwhile (a worker's start costs its own process).
        assert spent < 0.1 * took + 0.5, f"the supervisor used {spent:.2f} s of CPU in {took:.1f} s"
        # It stops at once, backing off or not.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, tail(log)
    finally:
        workers = children(process.pid)
        process.kill()  # first, so it starts no other worker
        process.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # they die all the time here
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in log.read_text()
    attacks.record(
        AREA,
        "a worker that dies every time it starts (`--workers 2`)",
        "restarted after 0.5, 1, 2 s ... (doubling, at most 30 s); the supervisor spends "
        f"{spent:.2f} s of CPU in {took:.0f} s and stops at once on SIGTERM",
    )
