"""What each worker serves, so that a change returns only once it is live.

After every refresh a worker writes `<data_dir>/workers/<pid>.json` (write, then
rename: a reader sees a whole file or the previous one):

    {"pid": 4242, "generation": 17, "functions": {"hello": 3}, "failed": {}}

`generation` is the registry's change counter the worker's table was built
from, read before the functions: a worker at generation >= G serves a registry
state at least as new as G. The admin handler that made a change reads G after
it and waits until every worker of its gateway reports G or later
(`wait_until_live`). A worker that dies stops counting at once (its pid is gone)
and the supervisor removes its file; its replacement loads every function
before it opens the public port, and counts once it has reported.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ._errors import GatewayError

__all__ = ["Rollout", "ServingBoard", "WorkerState"]

_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class WorkerState:
    """What one worker serves: each function's version, and the ones it could not load."""

    pid: int
    generation: int
    functions: dict[str, int]
    failed: dict[str, int]


@dataclass(frozen=True)
class Rollout:
    """The workers of this gateway once a change is live on all of them."""

    workers: list[WorkerState]

    def versions(self, name: str) -> list[tuple[int, int | None]]:
        """Each worker's pid and the version of `name` it serves (None: not served)."""
        return [(w.pid, w.functions.get(name)) for w in self.workers]


class ServingBoard:
    """The folder of worker reports of one gateway (its data directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def reset(self) -> None:
        """Forget the reports of a previous run (the parent, before workers start)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)

    def publish(self, generation: int, functions: dict[str, int], failed: dict[str, int]) -> None:
        """Report what this process serves now."""
        pid = os.getpid()
        state = {"pid": pid, "generation": generation, "functions": functions, "failed": failed}
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / f".{pid}.tmp"
        temp.write_text(json.dumps(state), encoding="utf-8")
        temp.replace(self.directory / f"{pid}.json")

    def forget(self, pid: int) -> None:
        """Drop the report of a worker that exited."""
        (self.directory / f"{pid}.json").unlink(missing_ok=True)

    def workers(self) -> list[WorkerState]:
        """The reports of the workers alive now, by pid."""
        states = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                state = WorkerState(
                    int(data["pid"]),
                    int(data["generation"]),
                    dict(data["functions"]),
                    dict(data["failed"]),
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile (its worker exited), or not ours
            if _alive(state.pid):
                states.append(state)
        return states

    def wait_until_live(
        self, generation: int, workers: int, name: str, change: str, timeout: float
    ) -> Rollout:
        """Once `workers` live workers serve registry generation `generation` or a
        later one. Raises GatewayError (504 `not_live`) when one could not load
        `name` or when they have not caught up within `timeout` seconds; the change
        itself is stored either way. `change` says what changed, for the message."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.workers()
            behind = [s for s in states if s.generation < generation]
            for state in states:
                if state.generation >= generation and name in state.failed:
                    raise GatewayError(
                        504,
                        "not_live",
                        f"{change} is stored, but worker {state.pid} could not load "
                        f"{name} version {state.failed[name]} (see the gateway's log); "
                        "it serves what it had",
                    )
            if len(states) >= workers and not behind:
                return Rollout(states)
            if time.monotonic() >= deadline:
                waiting = [str(s.pid) for s in behind]
                missing = max(0, workers - len(states))
                detail = f"worker(s) {', '.join(waiting)} had not loaded it" if waiting else ""
                if missing:
                    detail += f"{'; ' if detail else ''}{missing} worker(s) were not serving"
                raise GatewayError(
                    504,
                    "not_live",
                    f"{change} is stored, but after {timeout:g} s {detail}: it is not yet "
                    "live on every worker of this gateway (see the gateway's log)",
                )
            time.sleep(_POLL_SECONDS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
