"""CPU fairness between requests: long-running requests yield the CPU to short ones.

A function that burns its whole fuel budget keeps a core busy for a second or
more; twenty of them in flight leave a one-millisecond request of another
function waiting for a share of a core among them (measured: p99 5 ms -> 1 s).
Linux schedules by thread, so the sandbox thread of a request that has used
more than `after` seconds of CPU is lowered to nice 19: the scheduler then runs
short requests, and the worker's event loop, almost as if the long ones were not
there, while the long ones still use every idle cycle. CPU time, not wall time:
on a saturated worker every request is slow, and demoting those that merely
waited for a core made the fresh-instance gateway benchmark's p99 go from 4.9x
to 8.6x the baseline's. Its thread returns to
nice 0 when the request ends, which needs CAP_SYS_NICE (root, or the capability
in a container); without it requests are never demoted and a warning says so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Fairness"]

log = logging.getLogger("edgefn.gateway")

T = TypeVar("T")

_DEMOTED = 19


class Fairness:
    """Runs calls on the current thread, demoting the thread while a call runs long."""

    def __init__(self, after: float = 0.02, interval: float = 0.005) -> None:
        self.after = after
        self.interval = interval
        self.enabled = _can_renice()
        if not self.enabled:
            log.warning(
                "no CAP_SYS_NICE: long requests cannot be made to yield the CPU to short "
                "ones; a CPU-heavy function will slow its neighbours down"
            )
        # Native thread id -> (its CPU clock, that clock's reading when the call began).
        self._running: dict[int, tuple[int, float]] = {}
        self._demoted: set[int] = set()
        self._lock = threading.Lock()
        self._busy = threading.Event()  # set while any call runs: the watcher sleeps otherwise
        self._thread: threading.Thread | None = None

    def call(self, function: Callable[..., T], *args: object) -> T:
        if not self.enabled:
            return function(*args)
        self._start()
        thread = threading.get_native_id()
        clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._lock:
            self._running[thread] = (clock, time.clock_gettime(clock))
            if not self._busy.is_set():  # set() takes a lock and notifies: not per request
                self._busy.set()
        try:
            return function(*args)
        finally:
            with self._lock:
                del self._running[thread]
                if thread in self._demoted:
                    self._demoted.discard(thread)
                    os.setpriority(os.PRIO_PROCESS, thread, 0)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._watch, name="edgefn-fairness", daemon=True
                    )
                    self._thread.start()

    def _watch(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(self.interval)
            with self._lock:
                if not self._running:
                    self._busy.clear()
                for thread, (clock, started) in self._running.items():
                    used = time.clock_gettime(clock) - started
                    if used > self.after and thread not in self._demoted:
                        os.setpriority(os.PRIO_PROCESS, thread, _DEMOTED)
                        self._demoted.add(thread)


def _can_renice() -> bool:
    """Whether this process may lower a thread's nice value again once raised
    (tried on a throwaway thread, which may stay demoted)."""
    result: list[bool] = []

    def probe() -> None:
        thread = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, thread)
        try:
            os.setpriority(os.PRIO_PROCESS, thread, before + 1)
            os.setpriority(os.PRIO_PROCESS, thread, before)
            result.append(True)
        except PermissionError:
            result.append(False)

    prober = threading.Thread(target=probe)
    prober.start()
    prober.join()
    return result[0]
