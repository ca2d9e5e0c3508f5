"""The admin API's key-value routes: read and change a function's stores, for
operators and debugging (`edgefn kv`).

    GET    /v1/functions/{name}/kv/{store}?prefix=&limit=   {"keys": [...]}
    GET    /v1/functions/{name}/kv/{store}/{key}            the raw value
    PUT    /v1/functions/{name}/kv/{store}/{key}?ttl=       raw body; 204
    DELETE /v1/functions/{name}/kv/{store}/{key}            204

Keys may hold `/` and any printable character: clients percent-encode them
(`%2F`, `%20`, UTF-8 bytes); the router decodes the path, and `{key:kv_key}` takes
the rest of it (line breaks included, to refuse them). Writes obey the
function's effective limits, as its own do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from starlette.convertors import PathConvertor, register_url_convertor

from edgefn_contract.kv import MAX_KEYS_LISTED, check_key, check_store
from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota

from ..registry import FunctionRecord
from ._errors import GatewayError

if TYPE_CHECKING:
    from ..kv import KeyValueStores
    from ..registry import Registry
    from ._functions import FunctionTable

__all__ = ["KeysOut", "add_kv_routes"]

T = TypeVar("T")

# How long an admin call waits for the store's lock or database.
_DEADLINE = 10.0
# What each failure of the store answers here: an operator's call, not a function's.
_STATUSES = {
    "quota_exceeded": (507, "kv_quota_exceeded"),
    "unavailable": (503, "kv_unavailable"),
    "not_integer": (400, "kv_not_integer"),
    "invalid": (400, "invalid_kv_key"),
}


class _KeyConvertor(PathConvertor):
    """The rest of the path, line breaks included (`path` stops at them), so that a
    key with a control character is refused as such (400), not as no route (404)."""

    regex = r"[\s\S]+"


register_url_convertor("kv_key", _KeyConvertor())


class KeysOut(BaseModel):
    keys: list[str]


class _KVRoutes:
    def __init__(self, registry: Registry, table: FunctionTable, kv: KeyValueStores) -> None:
        self.registry, self.table, self.kv = registry, table, kv

    def _checked(self, name: str, store: str, key: str | None = None) -> FunctionRecord:
        record = self.registry.function(name)  # 404 function_not_found
        problem = check_store(store)
        if problem is not None:
            raise GatewayError(400, "invalid_kv_store", problem)
        if key is not None:
            problem = check_key(key)
            if problem is not None:
                raise GatewayError(400, "invalid_kv_key", problem)
        return record

    def list_keys(
        self,
        name: str,
        store: str,
        prefix: Annotated[str, Query(max_length=1024, description="Only keys starting so")] = "",
        limit: Annotated[
            int, Query(ge=1, le=MAX_KEYS_LISTED, description="At most this many keys")
        ] = MAX_KEYS_LISTED,
    ) -> KeysOut:
        """The store's live keys, in byte order."""
        self._checked(name, store)
        return KeysOut(keys=_call(lambda d: self.kv.keys(name, store, prefix, limit, d)))

    def get(self, name: str, store: str, key: str) -> Response:
        """The key's value, as stored (`application/octet-stream`); 404 `kv_key_not_found`."""
        self._checked(name, store, key)
        value = _call(lambda d: self.kv.get(name, store, key, d))
        if value is None:
            raise GatewayError(
                404, "kv_key_not_found", f"the store {store!r} of {name} has no key {key!r}"
            )
        return Response(value, media_type="application/octet-stream")

    async def put(
        self,
        name: str,
        store: str,
        key: str,
        request: Request,
        ttl: Annotated[
            float | None, Query(gt=0, description="Seconds until it expires; none: kept")
        ] = None,
    ) -> Response:
        """Set the key to the request's body, under the function's limits."""
        value = await request.body()
        await run_in_threadpool(self._put, name, store, key, value, ttl)
        return Response(status_code=204)

    def _put(self, name: str, store: str, key: str, value: bytes, ttl: float | None) -> None:
        record = self._checked(name, store, key)
        if ttl is not None and not math.isfinite(ttl):
            raise GatewayError(400, "invalid_request", "ttl must be a finite number of seconds")
        limits = self.table.effective(record).limits
        if len(value) > limits.max_kv_value:
            raise GatewayError(
                413,
                "kv_value_too_large",
                f"the value is {len(value):,} bytes, over {name}'s max_kv_value of "
                f"{limits.max_kv_value:,}; raise it under [limits] in edgefn.toml or with "
                f"`edgefn limits {name} --max-kv-value SIZE`, up to the operator's maximum",
            )
        quota = StoreQuota(max_bytes=limits.max_kv_store, max_keys=limits.max_kv_keys)
        _call(lambda d: self.kv.set(name, store, key, value, ttl, quota, d))

    def delete(self, name: str, store: str, key: str) -> Response:
        """Remove the key (nothing to do if it is absent)."""
        self._checked(name, store, key)
        _call(lambda d: self.kv.delete(name, store, key, d))
        return Response(status_code=204)


def _call(operation: Callable[[float], T]) -> T:
    try:
        return operation(time.monotonic() + _DEADLINE)
    except KVFailure as failure:
        status, code = _STATUSES.get(failure.kind, (500, "kv_error"))
        raise GatewayError(status, code, failure.message) from None


def add_kv_routes(
    app: FastAPI, registry: Registry, table: FunctionTable, kv: KeyValueStores
) -> None:
    """Register the key-value routes on the admin app."""
    routes = _KVRoutes(registry, table, kv)
    store, one = "/v1/functions/{name}/kv/{store}", "/v1/functions/{name}/kv/{store}/{key:kv_key}"
    app.add_api_route(store, routes.list_keys, methods=["GET"], response_model=KeysOut)
    binary: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/octet-stream": {}}, "description": "The value"}
    }
    app.add_api_route(one, routes.get, methods=["GET"], responses=binary)
    raw = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    app.add_api_route(
        one,
        routes.put,
        methods=["PUT"],
        status_code=204,
        openapi_extra={"requestBody": {"content": raw, "required": True}},
    )
    app.add_api_route(one, routes.delete, methods=["DELETE"], status_code=204)
