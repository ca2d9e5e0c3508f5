"""What a block of code leaves for the cyclic garbage collector, by type name."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[set[str]]:
    """Yield a set that, once the block has run, holds the type names of the
    objects it left in reference cycles (freed only by a collection, which
    reference counting would have freed at once)."""
    found: set[str] = set()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.update(type(garbage).__name__ for garbage in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
