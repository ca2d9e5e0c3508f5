"""The attack table: tests record each attack and what they observed, and a full,
green run of the suite writes them to docs/ATTACKS.md (see conftest.py), so the
table in the docs is always what the tests last saw."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "docs" / "ATTACKS.md"


@dataclass(frozen=True)
class Attack:
    area: str
    attack: str
    observed: str


RECORDED: dict[tuple[str, str], Attack] = {}


def record(area: str, attack: str, observed: str) -> None:
    """Note what `attack` did; call it after the test's assertions held."""
    RECORDED[area, attack] = Attack(area, attack, observed)


def write_table(path: Path = TABLE) -> None:
    lines = [
        "# Attacks tried and what happened",
        "",
        "Written by `make test` (tests/attacks.py) from what the tests observed in their "
        "last full, green run; each row is asserted by the test named in its area.",
        "",
    ]
    for area in dict.fromkeys(a.area for a in RECORDED.values()):
        lines += [f"## {area}", "", "| attack | observed |", "|---|---|"]
        for attack in (a for a in RECORDED.values() if a.area == area):
            lines.append(f"| {_cell(attack.attack)} | {_cell(attack.observed)} |")
        lines.append("")
    path.write_text("\n".join(lines))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
