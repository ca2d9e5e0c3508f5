"""Image bombs through a real gateway: the host's image work is charged to the
request before it is done, so each is refused fast and the worker's peak memory
stays within the function's limit plus a fixed overhead."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

import attacks
from gateway_process import ROOT, GatewayProcess, reset_peak_rss, rss, serving
from images import Bomb, image_bombs

AREA = "Image bombs against the shipped examples (tests/test_image_bombs.py)"
MiB = 2**20
# The examples' limits (functions/*/edgefn.toml).
MEMORY_LIMIT, TIMEOUT = 128 * MiB, 5.0
# The worker's own allocations around a request: its guest instance's heap
# (about 30 MB for these functions), the request and response bodies, Python.
OVERHEAD = 64 * MiB


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with serving(
        GatewayProcess(tmp_path_factory.mktemp("bombs") / "data", workers=1),
        ROOT / "functions" / "image_resize",
        ROOT / "functions" / "watermark",
    ) as process:
        yield process


@pytest.mark.parametrize("bomb", image_bombs(), ids=lambda bomb: bomb.name)
def test_image_work_is_charged_before_it_is_done(gateway: GatewayProcess, bomb: Bomb) -> None:
    assert gateway.process is not None
    pid = gateway.process.pid  # one worker: the gateway process serves requests itself
    before = reset_peak_rss(pid)
    started = time.perf_counter()
    response = httpx.post(gateway.public_url + bomb.path, content=bomb.body, timeout=60)
    seconds = time.perf_counter() - started
    growth = rss(pid, "VmHWM") - before
    code = response.json()["error"]["code"]
    assert (response.status_code, code) == (bomb.status, bomb.code), response.text
    assert seconds < TIMEOUT + 0.5
    assert growth < MEMORY_LIMIT + OVERHEAD, f"peak RSS grew by {growth / MiB:.0f} MB"
    assert gateway.get("/image_resize/sample.jpg?w=100").status_code == 200
    attacks.record(
        AREA,
        bomb.name,
        f"{bomb.status} `{code}` in {seconds:.2f} s; worker peak RSS +{growth / MiB:.0f} MB "
        f"(memory limit {MEMORY_LIMIT // MiB} MiB)",
    )
