"""CPU fairness without CAP_SYS_NICE: a long call runs at nice 19 and its thread is
then replaced, never raised back; and a gateway as shipped keeps a healthy
function's latency next to hostile ones."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edgefn_platform.gateway._fairness import FairThreadPool

BASE = os.getpriority(os.PRIO_PROCESS, 0)  # this process's nice value, 0 unless started niced


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def spin(seconds: float) -> tuple[int, int, int]:
    """Burns CPU for `seconds`; returns its thread's id and nice value before and after."""
    before = nice()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return threading.get_native_id(), before, nice()


def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def alive(native_id: int) -> bool:
    return any(t.native_id == native_id for t in threading.enumerate())


@pytest.fixture
def unprivileged(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """`os.setpriority` as without CAP_SYS_NICE: lowering works, raising is refused.
    Returns the (thread, value) pairs set."""
    calls: list[tuple[int, int]] = []
    real = os.setpriority

    def setpriority(which: int, who: int, value: int) -> None:
        if value < os.getpriority(which, who):
            raise PermissionError(errno.EACCES, "raising a priority needs CAP_SYS_NICE")
        calls.append((who, value))
        real(which, who, value)

    monkeypatch.setattr(os, "setpriority", setpriority)
    return calls


@pytest.fixture
def pool() -> Iterator[FairThreadPool]:
    pool = FairThreadPool(2, after=0.05, interval=0.005)
    try:
        yield pool
    finally:
        pool.shutdown()


def test_a_long_call_runs_demoted_and_its_thread_is_replaced(
    pool: FairThreadPool, unprivileged: list[tuple[int, int]]
) -> None:
    thread, at_start, at_end = pool.submit(spin, 0.3).result()
    assert (at_start, at_end) == (BASE, 19)
    assert unprivileged == [(thread, 19)]  # lowered once, never raised
    eventually(lambda: not alive(thread))
    assert pool.retired == 1
    replacement, at_start, at_end = pool.submit(spin, 0.001).result()
    assert replacement != thread and (at_start, at_end) == (BASE, BASE)


def test_short_calls_keep_their_thread_and_priority(
    pool: FairThreadPool, unprivileged: list[tuple[int, int]]
) -> None:
    results = [pool.submit(spin, 0.001).result() for _ in range(50)]
    assert {r[0] for r in results} == {results[0][0]}  # one thread served them all
    assert {r[1:] for r in results} == {(BASE, BASE)}
    assert unprivileged == [] and pool.retired == 0


def test_calls_queued_behind_demoted_ones_run_on_their_replacements() -> None:
    pool = FairThreadPool(1, after=0.01, interval=0.005)
    try:
        futures = [pool.submit(spin, 0.1) for _ in range(3)]
        results = [future.result(timeout=10) for future in futures]
    finally:
        pool.shutdown()
    assert len({r[0] for r in results}) == 3  # each on a new thread ...
    assert {r[1:] for r in results} == {(BASE, 19)}  # ... that started at the normal priority
    assert pool.retired == 3


def test_the_pool_behaves_as_an_executor(pool: FairThreadPool) -> None:
    assert pool.submit(pow, 2, 10).result() == 1024
    with pytest.raises(ZeroDivisionError):
        pool.submit(divmod, 1, 0).result()
    threads = {pool.submit(threading.get_native_id).result() for _ in range(5)}
    pool.shutdown()
    assert not any(alive(thread) for thread in threads)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(pow, 2, 10)
