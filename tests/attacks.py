"""The attack table: tests record each attack and what they observed; a green run
saves them to .cache/attacks.json (git-ignored, see conftest.py), and
`make attacks` runs the tests that record attacks and renders what they saw into
docs/ATTACKS.md (`python tests/attacks.py`). A test run never edits a tracked file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "ATTACKS.md"
RESULTS = ROOT / ".cache" / "attacks.json"


@dataclass(frozen=True)
class Attack:
    area: str
    attack: str
    observed: str


RECORDED: dict[tuple[str, str], Attack] = {}


def record(area: str, attack: str, observed: str) -> None:
    """Note what `attack` did; call it after the test's assertions held."""
    RECORDED[area, attack] = Attack(area, attack, observed)


def save(path: Path = RESULTS, recorded: Iterable[Attack] | None = None) -> None:
    """What this run recorded (`recorded`, by default), in the order the tests
    ran, for `write_table`."""
    attacks = RECORDED.values() if recorded is None else recorded
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(a) for a in attacks], indent=1) + "\n")


def load(path: Path = RESULTS) -> list[Attack]:
    return [Attack(**entry) for entry in json.loads(path.read_text())]


def write_table(recorded: list[Attack], path: Path = TABLE) -> None:
    lines = [
        "# Attacks tried and what happened",
        "",
        "Written by `make attacks` (tests/attacks.py) from what the tests observed in their "
        "last green run; each row is asserted by the test named in its area.",
        "",
    ]
    for area in dict.fromkeys(a.area for a in recorded):
        lines += [f"## {area}", "", "| attack | observed |", "|---|---|"]
        for attack in (a for a in recorded if a.area == area):
            lines.append(f"| {_cell(attack.attack)} | {_cell(attack.observed)} |")
        lines.append("")
    path.write_text("\n".join(lines))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    if not RESULTS.is_file():
        sys.exit(f"{RESULTS} is missing: run the tests first (`make attacks` does)")
    write_table(load())
    print(f"wrote {TABLE.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}")
