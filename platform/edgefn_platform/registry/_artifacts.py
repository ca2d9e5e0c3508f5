"""This node's content-addressed component files, `<sha256>.wasm` in one folder: the
embedded registry's store, and the PostgreSQL registry's local cache."""

from __future__ import annotations

import os
import shutil
from collections.abc import Set
from pathlib import Path

from .._crash import crash_point

__all__ = ["store", "sweep_unused"]


def store(source: Path, target: Path) -> None:
    """Copy `source` to `target` durably: readers see the whole file or none, and a
    crash leaves at most a `.partial` file for `sweep_unused`."""
    if target.exists():
        return
    partial = target.with_suffix(f".{os.getpid()}.partial")
    shutil.copyfile(source, partial)
    with open(partial, "rb") as file:
        os.fsync(file.fileno())
    os.replace(partial, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def sweep_unused(directory: Path, used: Set[str], partial: bool) -> list[Path]:
    """Remove the components whose sha256 is not in `used`, and half-written files
    unless `partial` is false (another process may be writing one); the paths removed."""
    unused = [a for a in directory.glob("*.wasm") if a.stem not in used]
    unused += directory.glob("*.partial") if partial else []
    for artifact in unused:
        artifact.unlink(missing_ok=True)
        if not partial:  # a delete's sweep, not the one at startup
            crash_point("delete:unlinking")
    return unused
