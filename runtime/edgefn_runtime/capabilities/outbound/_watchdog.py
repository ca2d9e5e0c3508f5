"""Ends a fetch at its deadline, whatever the origin sends.

urllib3's timeouts bound each read of a socket, not a whole exchange: an origin
sending its status line, its headers, a chunk-size line, a trailer or a TLS
handshake a byte at a time stretched a fetch with a 2 s deadline to 10-22 s
(measured in review). One thread watches the deadlines of the fetches in
flight and shuts down the sockets of any fetch that passes its deadline: the
read blocked on one returns at once, and the fetch fails as a timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["POOL_CLASSES", "Watch", "watching"]


class Watch:
    """One fetch's deadline and the sockets it has used so far."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._sockets = []


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._pid = -1

    def add(self, watch: Watch) -> None:
        with self._cond:
            if self._pid != os.getpid():  # a forked child has none of the parent's threads
                self._pid, self._heap = os.getpid(), []
                threading.Thread(
                    target=self._run, name="edgefn-fetch-watchdog", daemon=True
                ).start()
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
_current = threading.local()


@contextlib.contextmanager
def watching(deadline: float) -> Iterator[Watch]:
    """Watch the connections this thread uses until the block ends, and shut them
    down if `deadline` (time.monotonic()) passes first."""
    watch = Watch(deadline)
    _WATCHDOG.add(watch)
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = None
        watch.finish()


def _watch(sock: socket.socket | None) -> None:
    watch: Watch | None = getattr(_current, "watch", None)
    if watch is not None and sock is not None:
        watch.add(sock)


class _Watched:
    # A new socket (connecting, the TLS handshake) and a kept-alive one (each
    # request on it) are both watched by the fetch that uses them.
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def request(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        _watch(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# For `PoolManager.pool_classes_by_scheme`.
POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}
