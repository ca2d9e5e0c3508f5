"""The functions' log lines, printed in `edgefn dev`'s terminal as they arrive
(the worker prints the access lines itself)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._printable import printable
from ..registry import Registry, RegistryUnavailable, logs_since
from ..registry._model import LOG_LINES_KEPT

__all__ = ["LogTail"]

# The worker writes its lines to the registry every 0.25 s (`LogSink`).
_INTERVAL = 0.2


class LogTail:
    """Prints what `functions()` print (their log lines) with `echo`, from a thread."""

    def __init__(
        self,
        registry: Registry,
        functions: Callable[[], list[str]],
        echo: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.functions = functions
        self.echo = echo
        self._after: dict[str, int] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefn-dev-logs", daemon=True)

    def start(self) -> LogTail:
        for name in self.functions():  # from now on: not an earlier run's lines
            newest = self.registry.logs(name, 0, 1)
            self._after[name] = newest[-1].id if newest else 0
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(_INTERVAL):
            for name in self.functions():
                self._print(name)

    def _print(self, name: str) -> None:
        """Every line of `name`'s the registry still keeps since the last one printed."""
        try:
            records, skipped = logs_since(self.registry, name, self._after.get(name, 0))
        except RegistryUnavailable:
            return
        if skipped:
            self.echo(
                f"[{name}] ... (lines may have been left out: the registry keeps a "
                f"function's last {LOG_LINES_KEPT:,})"
            )
        for record in records:
            if record.kind == "log":
                self.echo(printable(f"[{name}] {record.line}"))
        if records:
            self._after[name] = records[-1].id
