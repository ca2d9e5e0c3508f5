"""Collecting the tests does no work: no worker, no temporary folder, nothing
written into the checkout (what a run writes goes to git-ignored `.cache/`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout_entries() -> set[str]:
    """What `git status` shows, ignored files included, outside .cache/ and .venv/."""
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    return {line for line in listed if not line[3:].startswith((".cache/", ".venv/"))}


def test_collecting_the_tests_leaves_no_folder_and_writes_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = checkout_entries()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"],
        cwd=ROOT,
        # Bytecode written as usual (this machine's PYTHONDONTWRITEBYTECODE would
        # make the check vacuous); where it goes is what is checked.
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "TMPDIR": str(scratch),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert " collected in " in result.stdout, result.stdout[-2000:]
    assert list(scratch.iterdir()) == []
    assert checkout_entries() == before
