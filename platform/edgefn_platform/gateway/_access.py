"""The access log: one line per function request on stdout.

JSON by default (for log shippers); a short human-readable line, with control
characters escaped, when stdout is a terminal. Lines are written in batches
every 0.1 s: a write per request cost the event loop a system call and a turn
at the GIL each time.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from .._printable import printable

__all__ = ["AccessEntry", "access_logger", "log_access"]


_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass
class AccessEntry:
    time: float
    request_id: str
    function: str | None
    version: int | None
    method: str
    path: str
    status: int
    outcome: str
    queue_ms: float
    instantiate_ms: float
    execute_ms: float
    total_ms: float
    fuel: int
    bytes_in: int
    bytes_out: int
    worker: int
    # Outbound HTTP: requests sent (redirect hops included), time and body bytes.
    fetches: int = 0
    fetch_ms: float = 0.0
    fetch_bytes: int = 0
    kv_ops: int = 0
    kv_ms: float = 0.0
    # The edge cache's answer (X-Edgefn-Cache); "" when no function was found.
    cache: str = ""

    def json(self) -> str:
        # vars(), not asdict(): the fields are flat, and asdict() deep-copies each.
        return _ENCODER.encode(vars(self))

    def human(self) -> str:
        """A line for a terminal: the client's path and request id escaped, so they
        can neither forge lines nor drive the terminal; the id whole, for grep."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return printable(
            f"{stamp} {self.status} {self.method} {self.path} -> "
            f"{self.function or '-'}@{self.version or '-'} {self.outcome}"
            f"{' ' + self.cache if self.cache else ''} "
            f"{self.total_ms:.1f} ms fuel {self.fuel:,} [{self.request_id}]"
        )


class _Formatter(logging.Formatter):
    def __init__(self, human: bool) -> None:
        super().__init__()
        self.human = human

    def format(self, record: logging.LogRecord) -> str:
        if self.human:
            entry: AccessEntry = record.entry  # type: ignore[attr-defined]
            return entry.human()
        return record.line  # type: ignore[attr-defined, no-any-return]


def log_access(entry: AccessEntry, line: str) -> None:
    """Log `entry`; `line` is its `json()`, which the caller needs too."""
    access_logger().info("", extra={"entry": entry, "line": line})


def access_logger() -> logging.Logger:
    logger = logging.getLogger("edgefn.access")
    if not logger.handlers:
        handler = _BatchingHandler(sys.stdout)
        handler.setFormatter(_Formatter(human=sys.stdout.isatty()))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _BatchingHandler(logging.Handler):
    """Formats at once, writes every `interval` seconds from a thread of its own."""

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []  # under the handler's own lock
        self._interval = interval
        threading.Thread(target=self._run, name="edgefn-access-log", daemon=True).start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock around emit().
        self._lines.append(self.format(record))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.flush()
            except Exception:  # a closed or broken stdout must not kill the thread
                pass
