"""The attack table: recorded by the tests, saved by a green run, rendered by `make attacks`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import attacks
from attacks import Attack

ROOT = Path(__file__).resolve().parent.parent


def test_saved_attacks_render_in_the_order_recorded_grouped_by_area(tmp_path: Path) -> None:
    recorded = [
        Attack("Area one (tests/a.py)", "first", "refused"),
        Attack("Area two (tests/b.py)", "a | pipe", "line\nbreak"),
        Attack("Area one (tests/a.py)", "second", "also refused"),
    ]
    attacks.save(tmp_path / "attacks.json", recorded)
    assert attacks.load(tmp_path / "attacks.json") == recorded
    attacks.write_table(attacks.load(tmp_path / "attacks.json"), tmp_path / "ATTACKS.md")
    assert (tmp_path / "ATTACKS.md").read_text() == "\n".join(
        [
            "# Attacks tried and what happened",
            "",
            "Written by `make attacks` (tests/attacks.py) from what the tests observed in their "
            "last green run; each row is asserted by the test named in its area.",
            "",
            "## Area one (tests/a.py)",
            "",
            "| attack | observed |",
            "|---|---|",
            "| first | refused |",
            "| second | also refused |",
            "",
            "## Area two (tests/b.py)",
            "",
            "| attack | observed |",
            "|---|---|",
            "| a \\| pipe | line break |",
            "",
        ]
    )


def test_a_session_saves_its_attacks_where_git_does_not_look() -> None:
    """So a test run leaves the checkout clean; `make attacks` writes the tracked table."""
    ignored = subprocess.run(
        ["git", "-c", f"safe.directory={ROOT}", "check-ignore", "-q", str(attacks.RESULTS)],
        cwd=ROOT,
    )
    assert ignored.returncode == 0, f"{attacks.RESULTS} is not git-ignored"
