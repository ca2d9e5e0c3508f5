"""Per-request log lines, buffered in memory and written to the registry in batches."""

from __future__ import annotations

import logging
import threading
import time

from ..registry import Registry, RegistryUnavailable

__all__ = ["LogSink"]

log = logging.getLogger("edgefn.gateway")

# Lines kept in memory when the registry cannot take them; older ones are dropped.
_BUFFER_LIMIT = 10_000


class LogSink:
    """Collects function log lines and access lines off the request path.

    A background thread flushes every `interval` seconds, so a request never
    waits for a database write.
    """

    def __init__(self, registry: Registry, interval: float = 0.25) -> None:
        self.registry = registry
        self.interval = interval
        self._pending: list[tuple[str, float, str, str, str]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefn-logs", daemon=True)

    def add(self, function: str, request_id: str, kind: str, lines: list[str]) -> None:
        now = time.time()
        with self._lock:
            self._pending.extend((function, now, request_id, kind, line) for line in lines)
            del self._pending[:-_BUFFER_LIMIT]

    def start(self) -> None:
        self._thread.start()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        try:
            self.registry.append_logs(pending)
        except RegistryUnavailable:
            # Back in the queue for the next flush: a database outage loses no line
            # unless it outlasts the buffer.
            with self._lock:
                self._pending[:0] = pending
                dropped = max(0, len(self._pending) - _BUFFER_LIMIT)
                del self._pending[:dropped]
            if dropped:
                log.warning("dropped the %d oldest log lines: the registry is unreachable", dropped)
        except Exception:
            log.exception("dropping %d log lines the registry did not take", len(pending))

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
