"""Memory given back after a burst (runtime/edgefn_runtime/_memory.py)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgefn_platform import BuildResult
from edgefn_platform.gateway.config import GatewayConfig
from edgefn_runtime import Engine, Request
from edgefn_runtime._memory import MemoryReleaser
from waiting import wait_until

MiB = 1024 * 1024
MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")
SLEEP = Request("GET", "/sleep", "seconds=0.3")


def image_rss(engine: Engine, build: BuildResult) -> int:
    """Resident bytes of every mapping of the function's memory image: the
    pool slots that hold it (mapped from the AOT artifact, or from a memfd)."""
    image = str(engine.aot.path_for(build.sha256))
    total, counting = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if MAPPING.match(line):  # a mapping's first line: address range ... path
            fields = line.split(None, 5)
            path = fields[5] if len(fields) > 5 else ""
            counting = path == image or path.startswith("/memfd:wasm-memory-image")
        elif counting and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_release_empties_the_slots_a_burst_left(engine: Engine, hostile_build: BuildResult) -> None:
    sandbox = engine.load(hostile_build.path, reuse=1)  # each store freed on return
    with ThreadPoolExecutor(4) as pool:  # 4 in flight at once: 4 slots
        outcomes = list(pool.map(lambda _: sandbox.invoke(SLEEP), range(4)))
    assert [o.response.status for o in outcomes] == [200] * 4
    kept = image_rss(engine, hostile_build)
    assert kept > 4 * 10 * MiB  # each slot keeps the ~12 MB CPython heap image
    assert engine.release_memory() >= 4
    assert image_rss(engine, hostile_build) < kept - 4 * 10 * MiB
    # An emptied slot serves the next request as a new one would.
    assert sandbox.invoke(Request("GET", "/counter")).response.status == 200


def test_release_closes_idle_reusable_instances_but_one(
    engine: Engine, hostile_build: BuildResult
) -> None:
    sandbox = engine.load(hostile_build.path, reuse=5)
    with ThreadPoolExecutor(3) as pool:  # 3 in flight at once: 3 instances
        list(pool.map(lambda _: sandbox.invoke(SLEEP), range(3)))
    assert sandbox.idle == 3
    engine.release_memory()
    assert sandbox.idle == 1  # the next request finds one, as it would have


def test_release_keeps_the_instances_made_ahead(hostile_build: BuildResult) -> None:
    with Engine(ahead=2) as engine:
        sandbox = engine.load(hostile_build.path)
        sandbox.invoke(Request("GET", "/counter"))
        wait_until(lambda: sandbox.ahead == 2, timeout=10, message="2 instances made ahead")
        engine.release_memory()
        assert sandbox.ahead == 2
        assert sandbox.invoke(Request("GET", "/counter")).usage.instantiate_seconds == 0


def test_release_while_requests_run(engine: Engine, hostile: object) -> None:
    from edgefn_runtime import Sandbox

    assert isinstance(hostile, Sandbox)
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(hostile.invoke, SLEEP) for _ in range(3)]
        engine.release_memory()  # those three keep their slots
        assert [r.result().response.body for r in running] == [b"woke up\n"] * 3


def test_gateway_workers_release_after_the_configured_delay(tmp_path: Path) -> None:
    with GatewayConfig(data_dir=tmp_path, memory_release_after=2.5).open_engine() as engine:
        assert engine.release_after == 2.5
    with GatewayConfig(data_dir=tmp_path, memory_release_after=0).open_engine() as engine:
        assert engine.release_after is None
    with pytest.raises(ValueError, match="memory release delay must be 0 .never. or positive"):
        GatewayConfig(data_dir=tmp_path, memory_release_after=-1)


class Clock:
    def __init__(self) -> None:
        self.cpu = 0.0
        self.rss = 100 * MiB

    def releaser(self, released: list[int]) -> MemoryReleaser:
        return MemoryReleaser(
            lambda: released.append(1),
            after=1.0,
            tick=0.5,
            busy=0.1,
            slack=64 * MiB,
            clock=lambda: self.cpu,
            rss=lambda: self.rss,
        )


def test_releases_once_quiet_and_grown() -> None:
    clock, released = Clock(), list[int]()
    releaser = clock.releaser(released)
    clock.rss += 500 * MiB  # the burst
    for _ in range(4):  # busy: half a core each tick
        clock.cpu += 0.25
        assert not releaser.step()
    assert not releaser.step()  # quiet for 0.5 s of the 1 s asked
    assert releaser.step()
    clock.rss = 120 * MiB
    for _ in range(10):  # quiet, and no growth since: nothing more to do
        assert not releaser.step()
    assert released == [1]


def test_no_release_without_growth_beyond_slack() -> None:
    clock, released = Clock(), list[int]()
    releaser = clock.releaser(released)
    clock.rss += 60 * MiB
    for _ in range(10):
        assert not releaser.step()
    assert released == []


def test_growth_before_a_rebase_is_no_burst() -> None:
    clock, released = Clock(), list[int]()
    releaser = clock.releaser(released)
    clock.rss += 300 * MiB  # loading the functions
    releaser.rebase()
    for _ in range(10):
        assert not releaser.step()
    clock.rss += 100 * MiB  # a burst after
    assert [releaser.step() for _ in range(3)] == [True, False, False]
    assert released == [1]


def test_release_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="after must be positive"):
        MemoryReleaser(lambda: None, after=0)
