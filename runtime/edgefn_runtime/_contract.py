"""edgefn's WIT contract as seen from the host: what a component must export."""

from __future__ import annotations

import wasmtime
from wasmtime import component as wc

from edgefn_contract import CONTRACT_VERSION

from ._codec import check_handle_type
from ._errors import InvalidComponent

__all__ = ["CONTRACT_VERSION", "HANDLER_EXPORT", "check_component"]

HANDLER_EXPORT = f"edgefn:http/incoming-handler@{CONTRACT_VERSION}"
_IMPORTS = {f"edgefn:http/{name}@{CONTRACT_VERSION}" for name in ("types", "image")}
_HANDLER_PREFIX = "edgefn:http/incoming-handler@"


def check_component(engine: wasmtime.Engine, component: wc.Component) -> None:
    """Raise `InvalidComponent` unless `component` implements the handler world."""
    component_type = component.type
    exports = component_type.exports(engine)
    if HANDLER_EXPORT not in exports:
        other = [name for name in exports if name.startswith(_HANDLER_PREFIX)]
        if other:
            version = other[0].removeprefix(_HANDLER_PREFIX)
            raise InvalidComponent(
                f"the component implements edgefn contract {version}, but this runtime "
                f"speaks {CONTRACT_VERSION}; rebuild it with a matching edgefn"
            )
        raise InvalidComponent(
            f"the component does not export {HANDLER_EXPORT} (it exports: "
            f"{', '.join(exports) or 'nothing'}); build functions with `edgefn build`"
        )
    handler = exports[HANDLER_EXPORT].ty
    if not isinstance(handler, wc.ComponentInstanceType) or "handle" not in handler.exports(engine):
        raise InvalidComponent(f"{HANDLER_EXPORT} does not export a `handle` function")
    check_handle_type(handler.exports(engine)["handle"].ty)
    for name in component_type.imports(engine):
        if not (name.startswith("wasi:") or name in _IMPORTS):
            raise InvalidComponent(f"the component imports {name}, which edgefn does not provide")
