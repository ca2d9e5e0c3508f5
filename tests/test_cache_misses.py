"""The edge cache's path for responses it cannot store, in-process
(`edgefn_platform.gateway._cache`): what a miss costs besides the function."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgefn_platform.gateway._cache import ResponseCache
from edgefn_platform.gateway._streams import Streams
from edgefn_runtime import Outcome, Response, Usage
from edgefn_runtime.cache import CacheConfig, HttpCache


class _Counted(HttpCache):
    def __init__(self, config: CacheConfig) -> None:
        super().__init__(config)
        self.disk_reads = 0

    def get(self, key: str, *, disk: bool = True) -> Any:
        self.disk_reads += disk
        return super().get(key, disk=disk)


def _serve(tmp_path: Path, *answers: list[tuple[str, str]]) -> tuple[list[str], int]:
    """GETs of one key, the function answering with these headers in turn: the
    X-Edgefn-Cache of each, and the disk reads of the second."""
    store = _Counted(CacheConfig(dir=tmp_path, disk=2**20))
    counter = SimpleNamespace(inc=lambda: None)
    metrics: Any = SimpleNamespace(coalesced=SimpleNamespace(labels=lambda *_: counter))
    cache = ResponseCache(store, metrics)
    function: Any = SimpleNamespace(name="f", cache_id="f@1")

    headers = iter(answers)

    async def run(
        method: str, request_headers: list[tuple[str, str]], _: Streams | None
    ) -> Outcome:
        return Outcome(Response(200, next(headers), b"body"), Usage(), [])

    async def serve_twice() -> tuple[list[str], int]:
        statuses, reads = [], 0
        for i in range(len(answers)):
            before = store.disk_reads
            answer = await cache.serve(function, "GET", "/p", "", [("host", "h")], run, run)
            statuses.append(answer.status)
            reads += (store.disk_reads - before) * (i == 1)
        return statuses, reads

    try:
        return asyncio.run(serve_twice())
    finally:
        store.close()


def test_a_key_whose_response_cannot_be_stored_skips_the_disk_next_time(tmp_path: Path) -> None:
    # Hit-for-miss: the function's answer said "not storable"; the next request
    # for the key runs it without reading the disk tier or taking the node's lock.
    private = [("cache-control", "private")]
    statuses, disk_reads = _serve(tmp_path, private, private)
    assert statuses == ["MISS", "MISS"] and disk_reads == 0


def test_a_key_whose_response_becomes_storable_is_cached_again(tmp_path: Path) -> None:
    private, public = [("cache-control", "private")], [("cache-control", "public, max-age=60")]
    statuses, _ = _serve(tmp_path, private, public, public)
    assert statuses == ["MISS", "MISS", "HIT"]


def test_a_stored_response_is_still_served_from_the_cache(tmp_path: Path) -> None:
    public = [("cache-control", "public, max-age=60")]
    statuses, _ = _serve(tmp_path, public, public)
    assert statuses == ["MISS", "HIT"]


def test_answers_at_once_only_what_needs_no_wait(tmp_path: Path) -> None:
    # `answer_now` (a GET the protocol would answer without an ASGI cycle): a fresh
    # entry in memory, or a run for a key known not to be storable; else None, and
    # the request takes `serve`.
    store = HttpCache(CacheConfig(dir=tmp_path, disk=2**20))
    metrics: Any = SimpleNamespace()
    cache = ResponseCache(store, metrics)
    function: Any = SimpleNamespace(name="f", cache_id="f@1")
    private, public = [("cache-control", "private")], [("cache-control", "public, max-age=60")]
    answers = iter([private, private, public])
    ran: list[list[tuple[str, str]]] = []

    def run_now(headers: list[tuple[str, str]]) -> Outcome | None:
        ran.append(headers)
        return Outcome(Response(200, next(answers), b"body"), Usage(), [])

    async def run(method: str, headers: list[tuple[str, str]], _: Streams | None) -> Outcome:
        outcome = run_now(headers)
        assert outcome is not None
        return outcome

    asked = [("host", "h"), ("if-none-match", '"x"')]
    try:
        # Nothing known of the key: a miss may read the disk or wait for another run.
        assert cache.answer_now(function, "/p", "", asked, run_now) is None and ran == []
        assert asyncio.run(cache.serve(function, "GET", "/p", "", asked, run, run)).status == "MISS"
        # Not storable: run at once, asked for the whole response (no condition).
        answer = cache.answer_now(function, "/p", "", asked, run_now)
        assert answer is not None and answer.status == "MISS"
        assert ran[-1] == [("host", "h")]
        # A run that cannot happen at once leaves it to `serve`.
        assert cache.answer_now(function, "/p", "", asked, lambda headers: None) is None
        # Storable again: stored, and the next is a hit without a run.
        assert cache.answer_now(function, "/p", "", asked, run_now).status == "MISS"  # type: ignore[union-attr]
        runs = len(ran)
        hit = cache.answer_now(function, "/p", "", [("host", "h")], run_now)
        assert hit is not None and (hit.status, hit.body) == ("HIT", b"body") and len(ran) == runs
    finally:
        store.close()


def test_a_response_streams_only_if_it_will_not_be_stored_and_its_waiters_go_on(
    tmp_path: Path,
) -> None:
    """A streamed response the cache would store is gathered whole; one it will not
    store streams, and requests for the key that waited for its run (coalescing)
    run at once instead of waiting for the stream's end."""
    store = HttpCache(CacheConfig(dir=tmp_path, disk=2**20))
    counter = SimpleNamespace(inc=lambda: None)
    metrics: Any = SimpleNamespace(coalesced=SimpleNamespace(labels=lambda *_: counter))
    cache = ResponseCache(store, metrics)
    function: Any = SimpleNamespace(name="f", cache_id="f@1")
    private, public = [("cache-control", "private")], [("cache-control", "public, max-age=60")]
    decisions: list[bool] = []
    events: list[str] = []

    async def scenario() -> None:
        go, streaming_ends = asyncio.Event(), asyncio.Event()

        async def first(
            method: str, headers: list[tuple[str, str]], streams: Streams | None
        ) -> Outcome:
            assert streams is not None
            await go.wait()
            # Asked on the sandbox's thread, as the gateway's stream asks it.
            for status, answer in ((200, public), (503, private), (200, private)):
                decisions.append(await asyncio.to_thread(streams, status, answer))
            events.append("first streams")
            await streaming_ends.wait()  # the stream goes on until the second has run
            events.append("first ends")
            return Outcome(Response(200, private, b""), Usage(), [])

        async def second(method: str, headers: list[tuple[str, str]], _: Streams | None) -> Outcome:
            events.append("second runs")
            streaming_ends.set()
            return Outcome(Response(200, private, b"body"), Usage(), [])

        served = asyncio.create_task(cache.serve(function, "GET", "/p", "", [], first, first))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(cache.serve(function, "GET", "/p", "", [], second, second))
        await asyncio.sleep(0.05)  # the second now waits for the first's run
        assert events == [] and not waiting.done()
        go.set()
        assert (await served).status == (await waiting).status == "MISS"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        store.close()
    assert decisions == [False, False, True]
    assert events == ["first streams", "second runs", "first ends"]
