"""`edgefn new`: copy a template into a new function folder."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from edgefn_runtime import EdgefnError

from .manifest import parse_manifest

__all__ = ["TEMPLATES", "ScaffoldError", "create_function"]

TEMPLATES = ("hello",)
# Stored without the dot so packaging tools do not skip it.
_RENAMES = {"gitignore": ".gitignore"}


class ScaffoldError(EdgefnError):
    """The function folder cannot be created."""

    code = "scaffold_failed"
    status = 400


def create_function(name: str, parent: Path, template: str = "hello") -> Path:
    """Create `parent/name` from `template`, with `{{name}}` filled in."""
    parse_manifest(f'name = "{name}"', source="name")  # same rules as edgefn.toml
    if template not in TEMPLATES:
        raise ScaffoldError(f"unknown template {template!r} (available: {', '.join(TEMPLATES)})")
    target = parent / name
    if target.exists():
        raise ScaffoldError(f"{target} already exists; choose another name or remove it")
    try:
        _copy(resources.files("edgefn_platform.templates") / template, target, name)
    except OSError as exc:
        raise ScaffoldError(f"cannot create {target}: {exc.strerror}") from None
    return target


def _copy(source: Traversable, target: Path, name: str) -> None:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "__pycache__":
            continue
        destination = target / _RENAMES.get(entry.name, entry.name)
        if entry.is_dir():
            _copy(entry, destination, name)
        else:
            destination.write_text(entry.read_text(encoding="utf-8").replace("{{name}}", name))
