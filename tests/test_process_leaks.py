"""The session's leftover-process check finds children and orphans of its own only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from process_leaks import SESSION_VARIABLE, leftovers, reap


def test_leftovers_are_children_and_marked_orphans_of_this_session_only() -> None:
    ours, theirs = uuid.uuid4().hex, uuid.uuid4().hex

    def start(script: str, marker: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, SESSION_VARIABLE: marker}
        return subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE)

    # A root with a child of another session's marker: found as a descendant.
    root = start("sleep 60 & echo $!; exec sleep 60", theirs)
    # An orphan (its shell exits at once) carrying our marker: found by the marker.
    orphaned = start("sleep 61 & echo $!", ours)
    # Another session's orphan: never touched.
    foreign = start("sleep 62 & echo $!", theirs)
    assert root.stdout and orphaned.stdout and foreign.stdout
    child, orphan, stranger = (int(p.stdout.readline()) for p in (root, orphaned, foreign))
    try:
        orphaned.wait()
        foreign.wait()
        assert {leftover.pid for leftover in leftovers(root.pid, ours)} == {child, orphan}
        killed = reap(root.pid, ours, grace=0.2)
        assert {leftover.pid for leftover in killed} == {child, orphan}
        assert all("sleep" in leftover.command for leftover in killed)
        assert leftovers(root.pid, ours) == []
        os.kill(stranger, 0)  # still running
    finally:
        for pid in (child, orphan, stranger, root.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        root.wait()


def test_an_orphan_without_the_marker_is_found_by_the_folder_its_command_names(
    tmp_path: Path,
) -> None:
    ours, folder = uuid.uuid4().hex, tmp_path / "session"
    folder.mkdir()
    neighbour = tmp_path / "session2"  # another session's folder, a longer name
    env = {"PATH": os.environ["PATH"]}  # an environment of its own: no marker
    sleep = f"{sys.executable} -c 'import time; time.sleep(63)'"
    started = [
        subprocess.Popen(
            ["sh", "-c", f"{sleep} {directory}/x >/dev/null & echo $!"],
            env=env,
            stdout=subprocess.PIPE,
        )
        for directory in (folder, neighbour)
    ]
    orphan, stranger = (int(p.communicate()[0]) for p in started)
    try:
        # Rooted at the exited shell: this process's own children are not looked at.
        root = started[0].pid
        found = {leftover.pid for leftover in leftovers(root, ours, [folder])}
        assert found == {orphan}
        killed = reap(root, ours, grace=0.2, folders=[folder])
        assert {leftover.pid for leftover in killed} == {orphan}
        os.kill(stranger, 0)  # still running
    finally:
        for pid in (orphan, stranger):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
