"""Instances done with, freed on a thread of their own after their response."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._instance import Instance

__all__ = ["retire"]

# Freeing a store resets its instance's memory for the next one (a copy of
# about 12 MiB, ~0.5 ms). A thread of its own does that after the response
# has left, with the GIL released, instead of the request waiting for it;
# when it falls behind, requests free their own, so pool slots never run out.
_MAX_RETIRING = 8
_retiring: queue.SimpleQueue[Instance] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def retire(instance: Instance) -> None:
    """Free `instance` soon, off the caller's path when the reaper keeps up."""
    global _reaper
    if _retiring.qsize() >= _MAX_RETIRING:
        instance.close()
        return
    if _reaper is None:
        with _reaper_lock:
            if _reaper is None:
                _reaper = threading.Thread(target=_reap, name="edgefn-reaper", daemon=True)
                _reaper.start()
    _retiring.put(instance)


def _reap() -> None:
    while True:
        instance = _retiring.get()
        instance.close()
        del instance  # the last reference: the store is freed here
