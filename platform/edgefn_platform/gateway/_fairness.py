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
to 8.6x the baseline's.

Any thread may lower its own priority; raising it back needs CAP_SYS_NICE,
which non-root containers and Kubernetes' restricted pods do not have. So a
demoted thread is never raised: when its request ends it retires, and a new
thread, started by the watcher (which runs at the worker's normal priority,
and a new thread inherits its creator's), takes its place. A thread costs
~70 us to start and its first sandbox call ~0.2 ms more than the next
(measured on the 2-core reference machine), paid only after a request that
used 20 ms of CPU; short requests keep their threads. Restoring in place (the
previous code, as root) measured a little better in tests/test_fairness.py's
noisy-neighbour run at concurrency 2 (1.8-2.2x a healthy function's solo p99
over 4 runs, against 2.1-2.9x over 9): not worth a second mechanism that only
root would run.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

__all__ = ["FairThreadPool"]

log = logging.getLogger("edgefn.gateway")

T = TypeVar("T")
P = ParamSpec("P")

_DEMOTED = 19
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Thread:
    """One pool thread as the watcher sees it."""

    __slots__ = ("clock", "demoted", "native_id", "started", "thread")

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.native_id = threading.get_native_id()
        self.clock = time.pthread_getcpuclockid(threading.get_ident())
        # Its CPU clock when its current call began; None while it waits for work.
        self.started: float | None = None
        self.demoted = False


class FairThreadPool(Executor):
    """A thread pool for sandbox calls in which a call that has used more than
    `after` seconds of CPU runs at nice 19, and its thread is then replaced.

    Like `ThreadPoolExecutor`, it starts a thread for a call when none is idle,
    up to `max_threads`, and keeps idle threads for the next calls; the hand-over
    is the same C-level queue, so a short call costs what it cost there
    (through `run_in_executor`, one call at a time: median 81 us against 99 us
    for `ThreadPoolExecutor` with the previous per-call wrapper, 7 runs each;
    nearly all of it the event loop's wake-up).
    """

    def __init__(
        self,
        max_threads: int,
        *,
        after: float = 0.02,
        interval: float = 0.005,
        name: str = "edgefn-sandbox",
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, not {max_threads}")
        self.max_threads = max_threads
        self.after = after
        self.interval = interval
        self.name = name
        self.retired = 0  # threads replaced after a demoted call, for tests and curiosity
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[_Thread] = []  # running, as the watcher sees them
        self._count = 0  # threads started or about to be, replacements included
        self._idle = 0  # threads that found no work and wait for some
        self._replace = 0  # retired threads the watcher has yet to replace
        self._numbers = itertools.count(1)  # for thread names
        self._busy = threading.Event()  # set while a call runs or a thread is due
        self._watcher: threading.Thread | None = None
        self._demote = True
        self._shutdown = False
        # Pool threads are daemons, so this waits for running calls at exit,
        # as `ThreadPoolExecutor` does for its own.
        atexit.register(self.shutdown)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run calls after shutdown")
            self._work.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
                return future
            if self._count >= self.max_threads:
                return future  # the next thread to finish takes it
            self._count += 1
            watcher = None
            if self._watcher is None:
                watcher = self._watcher = self._new_thread(self._watch, "fairness")
        # Started from the caller's thread, the event loop's, which is never
        # demoted: a new thread inherits its creator's priority.
        if watcher is not None:
            watcher.start()
        self._new_thread(self._serve).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = [t.thread for t in self._threads]
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        self._work.put(None)  # each thread passes it on to the next
        self._busy.set()
        if wait:
            for thread in threads:
                thread.join()
            if self._watcher is not None and self._watcher.is_alive():
                self._watcher.join()

    def running(self) -> bool:
        """Whether a call is still running on a pool thread."""
        with self._lock:
            return any(thread.started is not None for thread in self._threads)

    def _new_thread(self, target: Callable[[], None], name: str = "") -> threading.Thread:
        name = f"{self.name}-{name or next(self._numbers)}"
        return threading.Thread(target=target, name=name, daemon=True)

    def _serve(self) -> None:
        me = _Thread()
        with self._lock:
            self._threads.append(me)
        work = self._work
        while True:
            try:
                item = work.get_nowait()
            except queue.Empty:
                with self._lock:
                    self._idle += 1
                item = work.get()
            if item is None:
                work.put(None)
                with self._lock:
                    self._threads.remove(me)
                return
            future, fn, args, kwargs = item
            del item
            if not future.set_running_or_notify_cancel():
                continue
            me.started = time.clock_gettime(me.clock)
            if not self._busy.is_set():  # set() takes a lock and notifies: not per call
                self._busy.set()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
                del exc
            else:
                future.set_result(result)
                del result
            del future, fn, args, kwargs
            with self._lock:
                me.started = None  # from here on the watcher leaves this thread alone
                retire = me.demoted
                if retire:
                    # Raising it back to nice 0 would need CAP_SYS_NICE: let it go.
                    self._threads.remove(me)
                    self._replace += 1
                    self.retired += 1
            if retire:
                self._busy.set()  # wakes the watcher, which starts the replacement
                return

    def _watch(self) -> None:
        while True:
            self._busy.wait()
            with self._lock:
                if self._shutdown:
                    return
                due, self._replace = self._replace, 0
            for _ in range(due):
                self._new_thread(self._serve).start()
            time.sleep(self.interval)
            with self._lock:
                if self._shutdown:  # before the clear below could swallow its wake-up
                    return
                running = False
                for thread in self._threads:
                    if thread.started is None:
                        continue
                    running = True
                    if thread.demoted or not self._demote:
                        continue
                    if time.clock_gettime(thread.clock) - thread.started > self.after:
                        self._lower(thread)
                if not running and not self._replace:
                    self._busy.clear()
                    # A call that began since the scan above found the event still set.
                    if any(t.started is not None for t in self._threads):
                        self._busy.set()

    def _lower(self, thread: _Thread) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, thread.native_id, _DEMOTED)
        except OSError as exc:  # a seccomp profile that forbids even lowering
            self._demote = False
            log.warning(
                "cannot lower a thread's priority (%s): long requests will not yield "
                "the CPU to short ones",
                exc,
            )
            return
        thread.demoted = True
