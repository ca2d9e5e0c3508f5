"""The dev capability: `edgefn:http/dev` for the dev runner.

`edgefn dev` serves a function through the dev runner, a component that imports
the function's source when an instance starts instead of holding a snapshot of
it. Its grant `"dev"` is a `DevSource`. Only `edgefn dev`'s engine links this
capability: any other refuses a dev runner at load (`check_component`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

from ..._contract import DEV_IMPORT
from .._base import Capability, host_call

__all__ = ["DEV_IMPORT", "SOURCE_GUEST_PATH", "DevCapability", "DevSource"]

# Where the runner imports the function from (`edgefn._dev.SOURCE_DIR`).
SOURCE_GUEST_PATH = "/src"


@dataclass(frozen=True)
class DevSource:
    """A snapshot of the function's folder (`edgefn dev` takes one per save), and its
    manifest's entry."""

    directory: Path
    entry: str


class DevCapability(Capability):
    name = "dev"
    imports = frozenset({DEV_IMPORT})

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(DEV_IMPORT) as instance:
            instance.add_func("entry", _entry)

    def directories(self, grant: Any) -> Mapping[str, Path]:
        return {SOURCE_GUEST_PATH: grant.directory} if isinstance(grant, DevSource) else {}


def _entry(store: wasmtime.StoreContext) -> str:
    context, _ = host_call(store)
    source = context.grants.get(DevCapability.name)
    # No grant: an empty entry, whose import fails (the runner's error page says so).
    return source.entry if isinstance(source, DevSource) else ""
