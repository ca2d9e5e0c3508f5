"""Per-request log lines, buffered in memory and written to the registry in batches."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..registry import Registry, RegistryUnavailable

__all__ = ["LogSink"]

log = logging.getLogger("edgefn.gateway")

# What a worker keeps in memory while the registry cannot take its lines: the
# newest 10,000 lines and 8 MiB, whichever is less; older ones are dropped. The
# bytes bound the memory whatever the functions log (a line may be up to the
# function's `max_log`, 1 MiB at most); the lines bound the rows of one batch.
_BUFFER_LINES = 10_000
_BUFFER_BYTES = 8 * 1024 * 1024
# What a buffered line costs beyond its text: its tuples, float, int and the
# headers of its strings (sys.getsizeof adds up to about 380 bytes).
_LINE_OVERHEAD = 384
_WARN_EVERY = 10.0

Line = tuple[str, float, str, str, str]  # function, time, request id, kind, line


def _text_bytes(text: str) -> int:
    # len() unless the text has non-ASCII characters: a str stores those in up to 4 bytes.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class LogSink:
    """Collects function log lines and access lines off the request path.

    A background thread flushes every `interval` seconds, so a request never
    waits for a database write.
    """

    def __init__(self, registry: Registry, interval: float = 0.25) -> None:
        self.registry = registry
        self.interval = interval
        # Oldest first, each with its size; all under the lock.
        self._pending: deque[tuple[Line, int]] = deque()
        self._bytes = 0
        self._dropped = 0  # since the last warning about it
        self._warned_at = -_WARN_EVERY
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefn-logs", daemon=True)

    def add(self, function: str, request_id: str, kind: str, lines: list[str]) -> None:
        now = time.time()
        base = _LINE_OVERHEAD + len(function) + len(request_id) + len(kind)
        with self._lock:
            for line in lines:
                size = base + _text_bytes(line)
                self._pending.append(((function, now, request_id, kind, line), size))
                self._bytes += size
            self._trim()

    def start(self) -> None:
        self._thread.start()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending, self._bytes = self._pending, deque(), 0
        try:
            self.registry.append_logs(record for record, _ in pending)
        except RegistryUnavailable:
            # Back in the queue for the next flush: a database outage loses no line
            # unless it outlasts the buffer.
            with self._lock:
                pending.extend(self._pending)
                self._pending = pending
                self._bytes = sum(size for _, size in pending)
                self._trim()
        except Exception:
            log.exception("dropping %d log lines the registry did not take", len(pending))
        self._report_drops()

    def _report_drops(self) -> None:
        # At most one warning per _WARN_EVERY seconds: an outage drops lines at
        # every flush, four times a second.
        now = time.monotonic()
        with self._lock:
            if not self._dropped or now - self._warned_at < _WARN_EVERY:
                return
            dropped, self._dropped, self._warned_at = self._dropped, 0, now
        log.warning(
            "dropped the %d oldest log lines: the registry is unreachable or the lines "
            "came faster than it takes them (buffer: %d lines, %d MiB per worker)",
            dropped,
            _BUFFER_LINES,
            _BUFFER_BYTES // (1024 * 1024),
        )

    def _trim(self) -> None:
        """Drop the oldest lines until the buffer is within both of its limits."""
        while len(self._pending) > _BUFFER_LINES or self._bytes > _BUFFER_BYTES:
            _, size = self._pending.popleft()
            self._bytes -= size
            self._dropped += 1

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
