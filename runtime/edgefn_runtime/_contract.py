"""edgefn's WIT contract as seen from the host: what a component must export."""

from __future__ import annotations

from collections.abc import Collection

import wasmtime
from wasmtime import component as wc

from edgefn_contract import CONTRACT_VERSION

from ._errors import InvalidComponent
from ._handle_call import check_handle_type

__all__ = ["CONTRACT_VERSION", "DEV_IMPORT", "HANDLER_EXPORT", "check_component"]

HANDLER_EXPORT = f"edgefn:http/incoming-handler@{CONTRACT_VERSION}"
# The contract's own shared types; every other non-WASI import is a capability's.
_CONTRACT_IMPORTS = frozenset({f"edgefn:http/types@{CONTRACT_VERSION}"})
_HANDLER_PREFIX = "edgefn:http/incoming-handler@"
# What only the dev runner imports, and only `edgefn dev`'s engine provides.
DEV_IMPORT = f"edgefn:http/dev@{CONTRACT_VERSION}"


def check_component(
    engine: wasmtime.Engine, component: wc.Component, capabilities: Collection[str]
) -> None:
    """Raise `InvalidComponent` unless `component` implements the handler world
    and imports nothing but WASI and the interfaces in `capabilities`."""
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
        if name.startswith("wasi:") or name in _CONTRACT_IMPORTS or name in capabilities:
            continue
        if name == DEV_IMPORT:
            raise InvalidComponent(
                "the component is edgefn's dev runner, which serves only under `edgefn dev`; "
                "deploy the function itself (`edgefn deploy` builds it)"
            )
        raise InvalidComponent(f"the component imports {name}, which edgefn does not provide")
