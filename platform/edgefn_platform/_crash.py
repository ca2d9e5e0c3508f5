"""Crash points: where a test makes the gateway die mid-operation, to prove that a
crash at any step of a deploy, rollback or delete leaves a consistent registry.

`EDGEFN_CRASH_AT=deploy:stored` makes the process SIGKILL itself when it reaches
that point; unset (always, outside tests), a crash point costs one comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_POINTS", "WORKER_START", "crash_point"]

CRASH_POINTS = (
    "deploy:uploaded",  # the component is in the scratch directory
    "deploy:compiled",  # ...and compiled into the AOT cache
    "deploy:stored",  # ...and stored as an artifact, not yet in the registry
    "deploy:committed",  # ...and the new version is active
    "activate:uncommitted",  # the rollback is written but not committed
    "activate:committed",
    "delete:uncommitted",  # the function's rows are deleted but not committed
    "delete:committed",  # committed; no artifact removed yet
    "delete:unlinking",  # one artifact removed, maybe more to go
)
# Not a step of an operation: a worker process of `edgefn serve --workers N` dying
# as it starts, every time (a crash loop for the supervisor to back off from).
WORKER_START = "worker:start"

_AT = os.environ.get("EDGEFN_CRASH_AT")


def crash_point(name: str) -> None:
    if name == _AT:
        os.kill(os.getpid(), signal.SIGKILL)
