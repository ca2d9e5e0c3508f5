"""Every third-party module the host code imports comes from a declared dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sdk", "runtime", "platform")
# Modules componentize-py generates inside the guest at build time (`_guest.py`):
# they exist only there, never as an installed distribution.
GUEST_ONLY = {"wit_world", "componentize_py_types"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared() -> set[str]:
    """The distributions in [project].dependencies, names normalised."""
    names = (re.match(r"[A-Za-z0-9._-]+", r) for r in _project()["project"]["dependencies"])
    return {_normalise(name[0]) for name in names if name}


def _first_party() -> set[str]:
    return {package.split(".")[0] for package in _project()["tool"]["setuptools"]["packages"]}


def _imported() -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for absolute imports."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        for path in (ROOT / source).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    skipped = set(sys.stdlib_module_names) | _first_party() | GUEST_ONLY
    distributions = packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in _imported().items():
        if module in skipped:
            continue
        providers = {_normalise(d) for d in distributions.get(module, [])}
        if not providers & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not in [project].dependencies: {missing}"


def test_the_check_sees_the_imports_it_guards() -> None:
    # Guard against a walk that finds nothing (and so passes vacuously).
    imported = _imported()
    assert {"wasmtime", "click", "pydantic", "starlette", "PIL"} <= imported.keys()
    assert "pillow" in _declared() and "edgefn_runtime" in _first_party()
