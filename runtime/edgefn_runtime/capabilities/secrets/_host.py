"""The secrets capability: `edgefn:http/secrets` for guests.

A function reads only the names its manifest declares (its grant `"secrets"`),
from its own namespace (its grant `"function"`). A value is handed to the guest
and nowhere else: never to an exception, a log line or a failure message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import component as wc

from edgefn_contract.secrets import check_name

from ..._contract import CONTRACT_VERSION
from ..._wasmtime import fix_option_lowering
from .._base import Capability, RequestContext, host_call

__all__ = ["SECRETS_IMPORT", "SecretSource", "SecretsCapability"]

SECRETS_IMPORT = f"edgefn:http/secrets@{CONTRACT_VERSION}"
# `get` answers result<option<...>, failure>: see _wasmtime.fix_option_lowering.
fix_option_lowering()
log = logging.getLogger("edgefn.secrets")

SecretSource = Callable[[str, str], "str | None"]
"""(function, name) -> the value the operator set, or None."""


class SecretFailure(Exception):
    """A `get` refused; `kind` is one of `edgefn_contract.secrets.FAILURE_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class SecretsCapability(Capability):
    """The values `source(function, name)` gives (None: no secrets on this host,
    every declared name reads as unset)."""

    name = "secrets"
    imports = frozenset({SECRETS_IMPORT})

    def __init__(self, source: SecretSource | None = None) -> None:
        self.source = source

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(SECRETS_IMPORT) as instance:
            instance.add_func("get", functools.partial(_get, self))

    def get(self, context: RequestContext, name: str) -> str | None:
        """The value of the secret `name` for the function of `context`; raises
        `SecretFailure` for a name its manifest does not declare."""
        declared = context.grants.get(self.name) or frozenset()
        function = context.grants.get("function")
        if name not in declared:
            problem = check_name(name)
            if problem is not None:
                raise SecretFailure("not_declared", problem)
            raise SecretFailure(
                "not_declared",
                f"the secret {name!r} is not declared in this function's manifest; declare it "
                f'with secrets = ["{name}"] in edgefn.toml and set it with '
                f"`edgefn secrets set {function or 'FUNCTION'} {name}`",
            )
        if self.source is None or not isinstance(function, str) or not function:
            return None
        return self.source(function, name)


# The sandbox's linker binding ------------------------------------------------


def _get(capability: SecretsCapability, store: wasmtime.StoreContext, name: str) -> Any:
    # An exception escaping a host function would trap the guest and resurface
    # through a process-wide slot in wasmtime-py: every one becomes an `err`
    # (but `host_call`'s, which traps on purpose).
    # wasmtime-py lowers `result<option<string>, failure>` untagged (neither case
    # can be mistaken for the other): the value itself, or the failure record.
    context, _ = host_call(store)  # outside the `try`: see there
    try:
        return capability.get(context, name)
    except SecretFailure as failure:
        return _failure(failure.kind, failure.message)
    except Exception as exc:  # noqa: BLE001 - see above
        # Only the type: the source's exception could quote what it was reading.
        log.error("secrets: reading %r failed in the host: %s", name[:128], type(exc).__name__)
        return _failure("unavailable", f"the host failed: {type(exc).__name__}")


def _failure(kind: str, message: str) -> wc.Record:
    record = wc.Record()
    record.__dict__.update(kind=kind, message=message)
    return record
