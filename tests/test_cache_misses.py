"""The edge cache's path for responses it cannot store, in-process
(`edgefn_platform.gateway._cache`): what a miss costs besides the function."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgefn_platform.gateway._cache import ResponseCache
from edgefn_runtime import Outcome, Response, Usage
from edgefn_runtime.cache import CacheConfig, HttpCache


class _Counted(HttpCache):
    def __init__(self, config: CacheConfig) -> None:
        super().__init__(config)
        self.disk_reads = 0

    def get(self, key: str, *, disk: bool = True) -> Any:
        self.disk_reads += disk
        return super().get(key, disk=disk)


def _serve_twice(tmp_path: Path, headers: list[tuple[str, str]]) -> tuple[list[str], int]:
    """Two GETs of one key: the X-Edgefn-Cache of each, and the disk reads of the second."""
    store = _Counted(CacheConfig(dir=tmp_path, disk=2**20))
    counter = SimpleNamespace(inc=lambda: None)
    metrics: Any = SimpleNamespace(coalesced=SimpleNamespace(labels=lambda *_: counter))
    cache = ResponseCache(store, metrics)
    function: Any = SimpleNamespace(name="f", cache_id="f@1")

    async def run(method: str, request_headers: list[tuple[str, str]]) -> Outcome:
        return Outcome(Response(200, headers, b"body"), Usage(), [])

    async def serve_twice() -> tuple[list[str], int]:
        first = await cache.serve(function, "GET", "/p", "", [("host", "h")], run, run)
        reads = store.disk_reads
        second = await cache.serve(function, "GET", "/p", "", [("host", "h")], run, run)
        return [first.status, second.status], store.disk_reads - reads

    try:
        return asyncio.run(serve_twice())
    finally:
        store.close()


def test_a_key_whose_response_cannot_be_stored_skips_the_disk_next_time(tmp_path: Path) -> None:
    # Hit-for-miss: the function's answer said "not storable"; the next request
    # for the key runs it without reading the disk tier or taking the node's lock.
    statuses, disk_reads = _serve_twice(tmp_path, [("cache-control", "private")])
    assert statuses == ["MISS", "MISS"] and disk_reads == 0


def test_a_stored_response_is_still_served_from_the_cache(tmp_path: Path) -> None:
    statuses, _ = _serve_twice(tmp_path, [("cache-control", "public, max-age=60")])
    assert statuses == ["MISS", "HIT"]
