"""The key-value capability: `edgefn:http/kv` for guests.

A function opens only the stores its manifest declares (its grant `"kv"`), in
its own namespace (its grant `"function"`), under the request's `max_kv_ops`,
`max_kv_value`, `max_kv_store` and `max_kv_keys`; every operation is charged
to the request's fuel before the work, and bounded by its deadline: wasmtime's
epoch deadline does not fire while the host waits on the database, so an
operation that runs into it ends the request as the `Timeout` it is.

Values cross out of band, like fetch bodies: `set`'s value is the next bytes
of the guest's stdout, `get`'s is the file `/.edgefn/kv`.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import wasmtime
from wasmtime import component as wc

from edgefn_contract.kv import MAX_KEYS_LISTED, check_key

from ..._contract import CONTRACT_VERSION
from ..._errors import FuelExhausted, Timeout
from ..._messages import WARM_UP_HEADER, Usage
from ..._wasmtime import fix_option_lowering
from .._base import Capability, Fuel, RequestContext, host_call
from ._backend import KeyValueBackend, KVFailure, StoreQuota

__all__ = ["KV_IMPORT", "KeyValueCapability"]

KV_IMPORT = f"edgefn:http/kv@{CONTRACT_VERSION}"
# `get` answers result<option<...>, failure>: see _wasmtime.fix_option_lowering.
fix_option_lowering()
log = logging.getLogger("edgefn.kv")

# Fuel an operation costs before any byte: about what the host's work costs in
# guest instructions (a SQLite round trip is 10-100 us; wasm runs ~1e9 fuel/s),
# so a function looping on KV pays for it; then a unit a value byte.
_OP_FUEL = 100_000
_T = TypeVar("_T")


@dataclass
class KVState:
    """One request's key-value work so far."""

    ops: int = 0
    seconds: float = 0.0
    # The gateway's warm-up request: loading a version must not change a store
    # (a counter at `/` would count every load on every worker).
    warm_up: bool = False
    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


class KeyValueCapability(Capability):
    """The stores `backend` keeps (None: none on this host), values up to
    `max_value` bytes (the operator's maximum `max_kv_value`, which sizes the
    room the guest's stdout keeps for `set`'s values)."""

    name = "kv"
    imports = frozenset({KV_IMPORT})
    files = True

    def __init__(self, backend: KeyValueBackend | None, max_value: int) -> None:
        self.backend = backend
        self.stdout_reserve = max_value

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(KV_IMPORT) as instance:
            for op in ("open", "get", "set", "delete", "exists", "keys", "incr"):
                instance.add_func(op, functools.partial(_BINDINGS[op], self))

    def begin(self, context: RequestContext) -> KVState:
        if self.name not in context.grants:  # every operation is refused: nothing to read
            return KVState()
        return KVState(warm_up=any(name.lower() == WARM_UP_HEADER for name, _ in context.headers))

    def finish(self, state: KVState, usage: Usage) -> None:
        usage.kv_ops = state.ops
        usage.kv_seconds = state.seconds
        usage.kv_outcomes = dict(state.outcomes)

    # One method per WIT function; each raises `KVFailure`. ------------------

    def open(self, context: RequestContext, fuel: Fuel, store: str) -> None:
        # Only whether the store is declared (the WIT `open`): the backend is not asked.
        state: KVState = context.states[self.name]
        try:
            self._admit(state, context, fuel, store, None, 0)
        except KVFailure as failure:
            state.outcomes[("open", failure.kind)] += 1
            raise
        state.outcomes[("open", "ok")] += 1

    def get(self, context: RequestContext, fuel: Fuel, store: str, key: str) -> bytes | None:
        def work(backend: KeyValueBackend, function: str, deadline: float) -> bytes | None:
            return backend.get(function, store, key, deadline)

        value = self._run(context, fuel, "get", store, key, 0, work)
        if value is not None:
            # Charged after the fact (its size is known only now), as fetched bytes are.
            self._charge(context, fuel, len(value))
        return value

    def set(
        self,
        context: RequestContext,
        fuel: Fuel,
        store: str,
        key: str,
        value: bytes,
        ttl: float | None,
    ) -> None:
        quota = _quota(context)

        def work(backend: KeyValueBackend, function: str, deadline: float) -> None:
            backend.set(function, store, key, value, ttl, quota, deadline)

        self._run(context, fuel, "set", store, key, len(value), work)

    def delete(self, context: RequestContext, fuel: Fuel, store: str, key: str) -> None:
        def work(backend: KeyValueBackend, function: str, deadline: float) -> None:
            backend.delete(function, store, key, deadline)

        self._run(context, fuel, "delete", store, key, 0, work)

    def exists(self, context: RequestContext, fuel: Fuel, store: str, key: str) -> bool:
        def work(backend: KeyValueBackend, function: str, deadline: float) -> bool:
            return backend.exists(function, store, key, deadline)

        return self._run(context, fuel, "exists", store, key, 0, work)

    def keys(
        self, context: RequestContext, fuel: Fuel, store: str, prefix: str, limit: int
    ) -> list[str]:
        def work(backend: KeyValueBackend, function: str, deadline: float) -> list[str]:
            return backend.keys(function, store, prefix, limit, deadline)

        if not 1 <= limit <= MAX_KEYS_LISTED:
            self._refuse(context, "keys", f"limit must be 1 to {MAX_KEYS_LISTED}, got {limit}")
        if prefix and (problem := check_key(prefix)):
            self._refuse(context, "keys", f"prefix: {problem}")
        found = self._run(context, fuel, "keys", store, None, 0, work)
        self._charge(context, fuel, sum(len(k) + 1 for k in found))
        return found

    def incr(
        self,
        context: RequestContext,
        fuel: Fuel,
        store: str,
        key: str,
        by: int,
        ttl: float | None,
    ) -> int:
        quota = _quota(context)

        def work(backend: KeyValueBackend, function: str, deadline: float) -> int:
            return backend.incr(function, store, key, by, ttl, quota, deadline)

        return self._run(context, fuel, "incr", store, key, 0, work)

    # The checks every operation makes, in order. ----------------------------

    def _run(
        self,
        context: RequestContext,
        fuel: Fuel,
        op: str,
        store: str,
        key: str | None,
        size: int,
        work: Callable[[KeyValueBackend, str, float], _T],
    ) -> _T:
        state: KVState = context.states[self.name]
        try:
            self._admit(state, context, fuel, store, key, size)
            if self.backend is None:
                raise KVFailure(
                    "unavailable",
                    "key-value stores are not available on this host (`edgefn invoke` has "
                    "none): run the function in a gateway (`edgefn dev`), or test it with "
                    "edgefn.testing's MemoryKV",
                )
            if state.warm_up:
                raise KVFailure("unavailable", "no key-value operations in the warm-up request")
            function = context.grants.get("function")
            if not isinstance(function, str) or not function:
                raise KVFailure("unavailable", "this function has no name to keep stores under")
            started = time.monotonic()
            try:
                result = work(self.backend, function, context.deadline)
            except KVFailure as failure:
                if failure.kind == "unavailable" and time.monotonic() >= context.deadline:
                    context.stop(
                        fuel,
                        Timeout(
                            f"a key-value {op} ran past the function's wall-clock timeout of "
                            f"{context.limits.timeout:g} s: {failure.message}"
                        ),
                    )
                raise
            finally:
                state.seconds += time.monotonic() - started
        except KVFailure as failure:
            state.outcomes[(op, failure.kind)] += 1
            raise
        state.outcomes[(op, "miss" if op == "get" and result is None else "ok")] += 1
        return result

    def _admit(
        self,
        state: KVState,
        context: RequestContext,
        fuel: Fuel,
        store: str,
        key: str | None,
        size: int,
    ) -> None:
        """The checks every operation passes first, in order; raises `KVFailure`."""
        limits = context.limits
        name = context.grants.get("function") or "NAME"
        if state.ops >= limits.max_kv_ops:
            raise KVFailure(
                "quota_exceeded",
                f"this request already made {state.ops:,} key-value operations, its limit "
                f"(max_kv_ops = {limits.max_kv_ops:,}); raise it with [limits] max_kv_ops "
                f"in edgefn.toml or `edgefn limits {name} --max-kv-ops N`, up to the "
                "operator's maximum",
            )
        state.ops += 1
        _check_declared(context, store)
        if key is not None and (problem := check_key(key)):
            raise KVFailure("invalid", problem)
        if size > limits.max_kv_value:
            raise KVFailure(
                "too_large",
                f"the value of {size:,} bytes is over this function's limit of "
                f"{limits.max_kv_value:,} bytes (max_kv_value); raise it with [limits] "
                f"max_kv_value in edgefn.toml or `edgefn limits {name} --max-kv-value SIZE`, "
                "up to the operator's maximum",
            )
        if not fuel.spend(_OP_FUEL + size):
            context.stop(fuel, _out_of_fuel(context))
            raise KVFailure("unavailable", "the function has no fuel left for a key-value call")

    def _refuse(self, context: RequestContext, op: str, message: str) -> None:
        """An argument refused before the operation counts (the SDK checks it first)."""
        state: KVState = context.states[self.name]
        state.outcomes[(op, "invalid")] += 1
        raise KVFailure("invalid", message)

    def _charge(self, context: RequestContext, fuel: Fuel, units: int) -> None:
        if context.breach is None and not fuel.spend(units):
            context.stop(fuel, _out_of_fuel(context))


def _check_declared(context: RequestContext, store: str) -> None:
    declared = context.grants.get("kv") or frozenset()
    if store in declared:
        return
    if declared:
        which = f"it declares {', '.join(repr(s) for s in sorted(declared))}"
    else:
        which = "it declares none"
    raise KVFailure(
        "not_declared",
        f"the key-value store {store[:100]!r} is not declared in this function's manifest "
        f'({which}); declare it with key_value_stores = ["{store[:100]}"] in edgefn.toml',
    )


def _quota(context: RequestContext) -> StoreQuota:
    return StoreQuota(context.limits.max_kv_store, context.limits.max_kv_keys)


def _out_of_fuel(context: RequestContext) -> FuelExhausted:
    return FuelExhausted(
        f"the function used all of its fuel ({context.limits.fuel:,} units) on key-value calls"
    )


# The sandbox's linker binding ------------------------------------------------


def _ttl(ttl_ms: int) -> float | None:
    return ttl_ms / 1000 if ttl_ms else None


def _bind(
    answer: Callable[[KeyValueCapability, RequestContext, Fuel, Any], Any],
) -> Callable[..., Any]:
    """A host function: `answer(capability, context, fuel, args)`'s value as `ok`,
    every failure as `err`."""

    def host(capability: KeyValueCapability, store: wasmtime.StoreContext, *args: Any) -> Any:
        # An exception escaping a host function would trap the guest and resurface
        # through a process-wide slot in wasmtime-py: every one becomes an `err`
        # (but `host_call`'s, which traps on purpose).
        # wasmtime-py lowers a `result` whose ok type cannot be mistaken for the
        # failure record untagged: the ok value itself, or the record (every kv
        # function's is such a result: none, option, bool, string, s64).
        context, fuel = host_call(store)  # outside the `try`: see there
        try:
            return answer(capability, context, fuel, args)
        except KVFailure as failure:
            return _failure(failure.kind, failure.message)
        except Exception as exc:  # noqa: BLE001 - see above; the host's own bug, said plainly
            log.exception("key-value call failed in the host")
            return _failure("unavailable", f"the host failed: {type(exc).__name__}")

    return host


def _set(cap: KeyValueCapability, context: RequestContext, fuel: Fuel, args: Any) -> None:
    store, key, length, ttl_ms = args
    # The value is the next `length` bytes of stdout: taken even when refused, or
    # it would be sent ahead of the response body (never more than stdout holds).
    value = context.take_output(length) if length and context.take_output else b""
    if len(value) != length:
        raise KVFailure(
            "invalid", f"the guest announced {length:,} value bytes, {len(value):,} arrived"
        )
    cap.set(context, fuel, store, key, value, _ttl(ttl_ms))


def _get(cap: KeyValueCapability, context: RequestContext, fuel: Fuel, args: Any) -> int | None:
    value = cap.get(context, fuel, *args)
    if value is None:
        return None
    if context.put_file is None:
        raise KVFailure("unavailable", "the function's sandbox has no /.edgefn directory")
    context.put_file("kv", value)
    return len(value)


def _keys(cap: KeyValueCapability, context: RequestContext, fuel: Fuel, args: Any) -> str:
    store, prefix, limit = args
    return "".join(f"{key}\n" for key in cap.keys(context, fuel, store, prefix, limit))


def _incr(cap: KeyValueCapability, context: RequestContext, fuel: Fuel, args: Any) -> int:
    store, key, by, ttl_ms = args
    return cap.incr(context, fuel, store, key, by, _ttl(ttl_ms))


_BINDINGS: dict[str, Callable[..., Any]] = {
    "open": _bind(lambda cap, context, fuel, args: cap.open(context, fuel, *args)),
    "get": _bind(_get),
    "set": _bind(_set),
    "delete": _bind(lambda cap, context, fuel, args: cap.delete(context, fuel, *args)),
    "exists": _bind(lambda cap, context, fuel, args: cap.exists(context, fuel, *args)),
    "keys": _bind(_keys),
    "incr": _bind(_incr),
}


def _failure(kind: str, message: str) -> wc.Record:
    record = wc.Record()
    record.__dict__.update(kind=kind, message=message)
    return record
