"""What the operator sets for the cache (`[cache]` in the gateway config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheConfig"]


@dataclass(frozen=True)
class CacheConfig:
    """Bounds of the cache. `dir` None: `<data_dir>/cache`, set by the gateway."""

    enabled: bool = True
    # Bytes of entries (bodies and headers) each worker keeps in memory.
    memory: int = 64 * 2**20
    # Bytes of entries the node keeps on disk, all its workers together; 0: no disk tier.
    disk: int = 1024 * 2**20
    dir: Path | None = None
    # A larger response or original is served but never stored.
    max_object: int = 16 * 2**20
