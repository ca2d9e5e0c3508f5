"""Locks on cache keys that the node's worker processes share, so that concurrent
misses for one key in different workers run the function once (the others wait
for its entry in the disk tier they share).

One `flock`ed file per key being run, removed when the run ends: the kernel
drops a dead worker's locks with its process, and there are only as many files
as keys being run at once. A file a holder removed while another worker was
opening it is told apart by its inode, and opened again.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Held", "KeyLocks"]


@dataclass(frozen=True)
class Held:
    path: Path
    fd: int


class KeyLocks:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def try_lock(self, key: str) -> Held | None:
        """The lock on `key` if no other holder has it (never waits); None if one does.
        A key is a hex digest: it names a file safely."""
        path = self.directory / key
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return None  # no lock to be had: run without one
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return Held(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it after we opened it: open the new one

    def unlock(self, held: Held) -> None:
        try:
            os.unlink(held.path)
        except FileNotFoundError:
            pass
        os.close(held.fd)
