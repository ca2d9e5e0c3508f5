"""Snapshots of function folders: what the dev runner imports, one folder per content.

A request imports from the snapshot its version was deployed with, so a save never
changes the files under an import already running; a replaced snapshot is kept
for a grace period, for the requests that started on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ..builder import source_files
from ..manifest import Manifest
from ._local import DevError

__all__ = ["Snapshot", "Snapshots"]

# A file larger than this is not source: it belongs in the assets, or elsewhere.
MAX_FILE = 16 * 2**20
# How long a replaced snapshot is kept: over the longest request timeout an operator
# allows by default (30 s), with room for a queue.
GRACE_SECONDS = 120.0


@dataclass(frozen=True)
class Snapshot:
    """A function folder's source as it was at a save."""

    digest: str  # of everything below: the same digest, the same function
    path: Path  # the copy of its source files
    assets: str | None  # a digest of its assets' names, sizes and times, if it has any


class Snapshots:
    """The snapshots of `edgefn dev`'s functions, under `root/<function>/<digest>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._retired: dict[Path, float] = {}  # snapshot -> when it was replaced

    def take(self, directory: Path, manifest: Manifest) -> Snapshot:
        """A copy of the function's files in a folder named by their digest, which
        covers the assets too (they are deployed as assets, not copied here)."""
        assets = directory / manifest.assets if manifest.assets else None
        digest = hashlib.sha256(manifest.entry.encode() + b"\0")
        contents = []
        for path in source_files(directory):
            if assets is not None and assets in path.parents:
                continue  # deployed as assets: below
            # Editors' lock, swap and backup files are not source (Emacs' `.#app.py`
            # is a dangling link); a FIFO or device would block or never end.
            if path.name.startswith(".") or path.name.endswith("~"):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # gone since the walk, or a dangling link
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            relative = path.relative_to(directory)
            if info.st_size > MAX_FILE:
                raise DevError(
                    f"{relative}: {info.st_size:,} bytes; `edgefn dev` copies a function's "
                    f"files up to {MAX_FILE // 2**20} MiB on every save: move it to the "
                    "manifest's assets, or out of the folder"
                )
            data = path.read_bytes()
            digest.update(os.fsencode(relative) + b"\0" + data + b"\0")
            contents.append((relative, data))
        assets_sha = _stat_digest(assets) if assets is not None else None
        digest.update(f"assets\0{assets_sha}".encode())
        name = digest.hexdigest()[:20]
        target = self.root / manifest.name / name
        self._retired.pop(target, None)  # served again
        if not target.is_dir():
            partial = target.with_name(f".{name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            for relative, data in contents:
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                (partial / relative).write_bytes(data)
            partial.mkdir(parents=True, exist_ok=True)  # a function of no files
            partial.rename(target)
        return Snapshot(name, target, assets_sha)

    def replaced(self, snapshot: Path) -> None:
        """`snapshot` is served no more: remove it after the grace period, and
        remove those whose grace period is over."""
        now = time.monotonic()
        self._retired[snapshot] = now
        for path, since in list(self._retired.items()):
            if now - since > GRACE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
                del self._retired[path]


def _stat_digest(folder: Path) -> str:
    """A digest of every entry `pack_assets` packs (or refuses) in `folder`, by name,
    type, size and time: whatever changes there is a new archive."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        try:
            info = path.lstat()
        except FileNotFoundError:  # gone since the walk
            continue
        name = os.fsencode(path.relative_to(folder))
        digest.update(b"%s\0%d\0%d\0%d\0" % (name, info.st_mode, info.st_size, info.st_mtime_ns))
    return digest.hexdigest()
