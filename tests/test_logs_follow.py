"""`edgefn logs --follow` prints every line the gateway still keeps, however many
arrive between two of its polls: it reads on from the last line it showed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_process import GatewayProcess, cli
from waiting import wait_until

FUNCTIONS = Path(__file__).resolve().parent / "functions"
BURST = 500  # more than one poll's 200 lines before the fix; under the 1,000 kept


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("follow") / "data"
    process = GatewayProcess(data_dir)
    process.start()
    try:
        assert cli(process, "deploy", str(FUNCTIONS / "hostile")).exit_code == 0
        yield process
    finally:
        process.stop()


@pytest.fixture
def follow(gateway: GatewayProcess) -> Iterator[list[str]]:
    """`edgefn logs hostile --follow` in a process of its own: the lines it printed."""
    command = [
        sys.executable, "-m", "edgefn_platform", "logs", "hostile", "--follow",
        "--gateway", gateway.admin_url, "--token", gateway.token,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )
    printed: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield printed
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)


def test_follow_prints_a_burst_larger_than_a_poll_in_full(
    gateway: GatewayProcess, follow: list[str]
) -> None:
    first = gateway.get("/hostile/print?text=before-the-burst")
    wait_until(
        lambda: any("before-the-burst" in line for line in follow),
        message=lambda: f"the first line in `logs --follow`: {follow[-5:]}",
    )
    burst = gateway.get(f"/hostile/log-flood?lines={BURST}")
    assert burst.status_code == 200 and first.status_code == 200
    rid = burst.headers["x-request-id"]
    # The burst's access line is written after its log lines.
    wait_until(
        lambda: any(rid in line and "access" in line for line in follow),
        message=lambda: f"the burst's access line in `logs --follow`: {follow[-5:]}",
    )
    flood = [line.split("flood line ", 1)[1][:6] for line in follow if "flood line " in line]
    assert flood == [f"{i:06d}" for i in range(BURST)]
    assert not any("dropped" in line for line in follow)
