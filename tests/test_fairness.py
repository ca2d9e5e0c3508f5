"""Long requests are demoted to nice 19 while they run, and restored after."""

from __future__ import annotations

import os
import threading
import time

import pytest

from edgefn_platform.gateway._fairness import Fairness


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def spin(seconds: float) -> list[int]:
    seen = [nice()]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return [*seen, nice()]


def test_a_long_call_is_demoted_while_it_runs_and_restored_after() -> None:
    fairness = Fairness(after=0.05, interval=0.01)
    if not fairness.enabled:
        pytest.skip("needs CAP_SYS_NICE (CI runs as root)")
    at_start, at_end = fairness.call(spin, 0.3)
    assert (at_start, at_end) == (0, 19)
    assert nice() == 0
    assert fairness.call(spin, 0.001) == [0, 0]  # short calls are never touched


def test_without_the_privilege_calls_run_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgefn_platform.gateway._fairness._can_renice", lambda: False)
    fairness = Fairness(after=0.01, interval=0.005)
    assert not fairness.enabled
    assert fairness.call(spin, 0.1) == [0, 0]
