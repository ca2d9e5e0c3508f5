"""The dev runner's modules: what a function may import, loaded at build time.

A component built by componentize-py has no Python files at run time: every
module a function uses is in its snapshot, imported while it was built (the
standard library's files are gone afterwards; componentize-py issue #23). The
dev runner imports the function at instance start instead, so at build time it
imports every module the function could import (the standard library, the
requirements, the SDK: ~530 modules, ~4.5 s once, doubling the component to
~39 MB) and takes out of `sys.modules` every module a built function's entry
would not have loaded before importing the function.

While the function is imported (`importing_from`), they are handed back on
demand, each with the modules its own import statements named (recorded at
build time), and its source folder is on the path; afterwards neither is, so
`sys.modules` holds what a build of that function would hold, and a module the
function imports only inside a handler fails in dev as it would deployed,
rather than working in dev alone.

Written by hand: it runs inside the component, where only the standard library is.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

__all__ = ["importing_from", "preload"]

# Not importable in a component, or not code a function imports: tests, GUIs,
# installers, REPLs, and modules that print or open a browser when imported.
_SKIP = frozenset(
    {
        "__hello__", "__phello__", "_edgefn_entry", "_pyrepl", "antigravity", "ensurepip",
        "idlelib", "lib2to3", "pydoc_data", "test", "this", "tkinter", "turtle", "turtledemo",
        "venv",
    }
)  # fmt: skip
# componentize-py's own folders on the build's path: its generated bindings and runtime.
_NOT_WALKED = frozenset({"/world", "/bundled"})

_modules: dict[str, ModuleType] = {}
_specs: dict[str, Any] = {}
_named: dict[str, set[str]] = {}


def preload(built: frozenset[str]) -> int:
    """Import every module on the build's path, then take out of `sys.modules` all
    but `built`, the modules a built function has before its own import; how many.
    Run once, at build time."""
    real_import = builtins.__import__

    def recording(
        name: str,
        globals: Mapping[str, object] | None = None,  # noqa: A002 - __import__'s own names
        locals: Mapping[str, object] | None = None,  # noqa: A002
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        module = real_import(name, globals, locals, fromlist, level)
        importer = (globals or {}).get("__name__")
        if isinstance(importer, str):
            with contextlib.suppress(ImportError, ValueError, TypeError):
                package = (globals or {}).get("__package__")
                full = (
                    importlib.util.resolve_name("." * level + name, str(package)) if level else name
                )
                named = _named.setdefault(importer, set())
                named.add(full)
                named.update(f"{full}.{item}" for item in fromlist or () if item != "*")
        return module

    builtins.__import__ = recording
    try:
        for name in _module_names():
            with contextlib.suppress(BaseException):  # not importable here: left out
                importlib.import_module(name)
    finally:
        builtins.__import__ = real_import
    for name in set(sys.modules) - built:
        module = sys.modules.pop(name)
        _modules[name], _specs[name] = module, getattr(module, "__spec__", None)
        # What it holds as modules, too: it was imported before the recording began
        # (by the runner itself: `socket`, whose `selectors` a build would have), or a
        # name it imported is bound to a module.
        named = _named.setdefault(name, set())
        named.update(v.__name__ for v in vars(module).values() if isinstance(v, ModuleType))
    return len(_modules)


def _module_names() -> Iterator[str]:
    for path in sys.path:
        if path in _NOT_WALKED or not os.path.isdir(path):
            continue
        for info in pkgutil.walk_packages([path], onerror=lambda _name: None):
            parts = info.name.split(".")
            if parts[0] in _SKIP or {"test", "tests", "__main__"} & set(parts):
                continue
            yield info.name


class _Preloaded(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Hands back a preloaded module, as it was built, with what it imported."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        module = _modules.get(name)
        if module is None:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=hasattr(module, "__path__"))

    def create_module(self, spec: Any) -> ModuleType:
        return _modules[spec.name]

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__spec__ = _specs[name]  # the import system set ours; its own again
        pending = [*_named.get(name, ())]
        while pending:
            dependency = pending.pop()
            if dependency in _modules and dependency not in sys.modules:
                sys.modules[dependency] = _modules[dependency]
                pending += _named.get(dependency, ())
                # `import a.b.c` binds `a`, so a built function has its parents too.
                parts = dependency.split(".")
                pending += [".".join(parts[:n]) for n in range(1, len(parts))]


class _Sealed(importlib.abc.MetaPathFinder):
    """After the function's import: nothing more from its folder, as a built
    function has no files (a package's `__path__` still points there)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None and any(str(p).startswith(self.source) for p in path):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@contextlib.contextmanager
def importing_from(source: str) -> Iterator[None]:
    """The function's folder `source` and the preloaded modules are importable
    inside this block, and no longer after it."""
    finder = _Preloaded()
    sys.path.insert(0, source)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(source)
        sys.path_importer_cache.pop(source, None)
        sys.meta_path.insert(0, _Sealed(source))
