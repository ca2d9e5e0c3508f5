"""Processes a test session started and left running.

Every process the session starts inherits `EDGEFN_TEST_SESSION=<id>` from its
environment, so one whose parent died (a worker orphaned when its gateway was
killed, reparented to init) is still known as ours, and so is one whose
command line names a folder of the session's own (its pytest temporary
directory: a process started with an environment of its own); processes of
other sessions, other checkouts or the developer's own gateways are not touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from waiting import WaitTimeout, wait_until

__all__ = ["Leftover", "leftovers", "mark_session", "reap"]

SESSION_VARIABLE = "EDGEFN_TEST_SESSION"


def mark_session() -> str:
    """Give this process (and so everything it starts) a session id; return it."""
    marker = uuid.uuid4().hex
    os.environ[SESSION_VARIABLE] = marker
    return marker


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.command}"


def leftovers(root: int, marker: str, folders: Sequence[Path] = ()) -> list[Leftover]:
    """Running processes below `root`, those carrying `marker` and those whose
    command line names a path in one of `folders` (but not `root`)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue  # gone meanwhile
        if state not in ("Z", "X"):  # a zombie only waits to be reaped
            parents[int(stat.parent.name)] = int(parent)
    tag = f"{SESSION_VARIABLE}={marker}".encode()
    names = [os.path.join(folder, "").encode() for folder in folders]  # pytest-1/ not pytest-12
    found = [
        pid
        for pid in parents
        if pid != root
        and (
            _descends(pid, root, parents)
            or tag in _environ(pid)
            or any(name in _cmdline(pid) for name in names)
        )
    ]
    return [Leftover(pid, _command(pid)) for pid in sorted(found)]


def reap(
    root: int, marker: str, grace: float = 5.0, folders: Sequence[Path] = ()
) -> list[Leftover]:
    """Wait up to `grace` seconds for this session's leftovers to exit (some are on
    their way out), then SIGKILL the rest; return those that had to be killed."""
    found: list[Leftover] = []

    def gone() -> bool:
        found[:] = leftovers(root, marker, folders)
        return not found

    with contextlib.suppress(WaitTimeout):  # the ones still running are killed below
        wait_until(gone, timeout=grace, interval=0.1, message="the session's processes to exit")
    for leftover in found:
        try:
            os.kill(leftover.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def _descends(pid: int, root: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
        if pid == root:
            return True
    return False


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _command(pid: int) -> str:
    words = _cmdline(pid).split(b"\0")
    if words == [b""]:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words if w)[:300]
