"""The edge cache in front of the functions: a response computed once is served
many times without running the function (RFC 9111, as a shared cache).

What is stored and for how long is `edgefn_runtime.cache`'s (`decide`); this
module decides, per request, whether the function runs at all:

- fresh entry: HIT, answered from the cache (304 when the client's
  `If-None-Match` / `If-Modified-Since` matches);
- stale within `stale-while-revalidate`: STALE, answered at once while one
  background run refreshes it;
- stale otherwise, or `no-cache`: the function runs with the entry's
  validators; its 304 makes it REVALIDATED, its failure (an error, a 5xx, a
  timeout) within `stale-if-error` serves the stale copy (STALE);
- nothing stored: MISS, and concurrent misses for one key wait for the first
  one's run instead of running the function again (coalescing, bounded).

Requests the cache does not handle (not GET or HEAD, a function with
`cache = false`, the cache off) are BYPASS. A client cannot make the gateway
skip its cache (`Cache-Control: no-cache` from a request is not obeyed, as at
Cloudflare or Fastly): one request header would otherwise run the full image
pipeline at will. Purges are the operator's way to drop entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from edgefn_runtime import Outcome, Response, SandboxError
from edgefn_runtime.cache import Entry, HttpCache
from edgefn_runtime.cache._keep import keep, locate
from edgefn_runtime.cache._keys import key, normalise_query
from edgefn_runtime.cache._rules import (
    Freshness,
    decide,
    freshened,
    not_modified,
    not_modified_headers,
    validators,
)

from ._errors import GatewayError
from ._functions import LiveFunction
from ._keylocks import Held, KeyLocks
from ._metrics import Metrics
from ._streams import Streams

__all__ = ["CACHE_HEADER", "Cached", "ResponseCache"]

log = logging.getLogger("edgefn.gateway")

CACHE_HEADER = "x-edgefn-cache"
_CONDITIONAL = ("if-none-match", "if-modified-since")
Headers = list[tuple[str, str]]
# Runs the function with this method and these request headers (and, if not
# None, what of its streamed responses may stream): its outcome, or the error it
# raised.
Run = Callable[[str, Headers, Streams | None], Awaitable[Outcome]]
# What became of a run, told to the requests that waited for it: its response
# stored; one that can never be (the waiters run at once, and the key's requests
# skip the wait for a while); not stored for this request's sake (a HEAD, its
# `Authorization`); failed. Unless it was stored, the waiters run at once.
_STORED, _UNCACHEABLE, _UNSTORED, _FAILED = "stored", "uncacheable", "unstored", "failed"
_UNCACHEABLE_SECONDS = 10.0
_UNCACHEABLE_KEYS = 10_000
# How often a miss waiting for another worker's run looks for its entry.
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Cached:
    """An answer: from the cache (`outcome` None) or from the function's run."""

    status: str  # the X-Edgefn-Cache value
    code: int
    headers: Headers
    body: bytes
    outcome: Outcome | None = None
    # What the function's run failed with when a stale copy answers instead.
    error: GatewayError | SandboxError | None = None


@dataclass
class _Request:
    function: LiveFunction
    method: str
    path: str
    headers: Headers
    base: str  # the key before Vary
    # What its runs are coalesced on: the variant's key once the response's
    # `Vary` is known, so requests for other variants do not queue behind it.
    key: str


class ResponseCache:
    """One worker's view of the edge cache: the shared `HttpCache`, the runs it is
    waiting for (coalescing) and the background refreshes it started."""

    def __init__(
        self,
        store: HttpCache,
        metrics: Metrics,
        wait: float = 30.0,
        locks: KeyLocks | None = None,
    ) -> None:
        self.store = store
        # Shared with the node's other workers (with the disk tier): None, no
        # coalescing across workers.
        self.locks = locks
        self.metrics = metrics
        # How long a coalesced request waits for another's run before running itself.
        self.wait = wait
        self._running: dict[str, asyncio.Future[str]] = {}
        # Keys whose last response could not be stored: their requests run at once
        # instead of queueing behind each other (a "hit-for-miss", as Varnish has).
        self._uncacheable: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reads = ThreadPoolExecutor(2, thread_name_prefix="edgefn-cache-read")

    async def warm_up(self) -> None:
        """Open what a worker's first miss would otherwise open on its path: the
        disk tier's connection on each read thread (SQLite, per thread) and the
        key locks' directory, so that a restart's first request does not
        (`bench/gateway.py` times it against the warm median)."""
        loop = asyncio.get_running_loop()
        reads = [loop.run_in_executor(self._reads, self.store.get, "warm-up") for _ in range(2)]
        await asyncio.gather(*reads)
        if self.locks is not None and (held := self.locks.try_lock("warm-up")) is not None:
            self.locks.unlock(held)

    def applies(self, method: str, function: LiveFunction) -> bool:
        return function.cache_id is not None and method in ("GET", "HEAD")

    async def serve(
        self,
        function: LiveFunction,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        run: Run,
        refresh: Run,
    ) -> Cached:
        """The answer to a GET or HEAD for `function` (`applies()` was true):
        `run` runs the function for this request, `refresh` in the background
        (a stale entry's refresh, which is its own request in logs and metrics)."""
        request, entry = self._lookup(function, method, path, query, headers)
        if entry is None and self._uncacheable.get(request.key, 0.0) > time.monotonic():
            # Its last response could not be stored (hit-for-miss): a disk read,
            # the node-wide lock and its release on the writer thread would only
            # delay a run whose answer will not be stored either. They were ~20 %
            # of a worker's time for a function that never sets Cache-Control.
            answer, result = await self._run(request, None, run)
            if result == _STORED:  # storable again: back to the full path
                self._uncacheable.pop(request.key, None)
            return answer
        if entry is None and self.store.has_disk:
            # A disk read takes 0.1-6 ms: off the event loop, which only misses pay for.
            entry, request.key = await self._locate_on_disk(request)
        now = time.time()
        if entry is not None:
            if now < entry.fresh_until:
                return self._answer(entry, "HIT", headers, now)
            if now < entry.fresh_until + entry.stale_while_revalidate:
                self._refresh_later(request, entry, refresh)
                return self._answer(entry, "STALE", headers, now)
        return await self._run_once(request, entry, run)

    def answer_now(
        self,
        function: LiveFunction,
        path: str,
        query: str,
        headers: Headers,
        run: Callable[[Headers], Outcome | None],
    ) -> Cached | None:
        """`serve` for a GET, without waiting, or None when it would wait: a fresh
        entry in this worker's memory (HIT), or a run by `run` (None: it cannot
        run at once) for a key whose responses could not be stored (hit-for-miss).
        Anything else (a disk lookup, a stale entry, a miss that may coalesce)
        goes through `serve`."""
        request, entry = self._lookup(function, "GET", path, query, headers)
        now = time.time()
        if entry is not None:
            return self._answer(entry, "HIT", headers, now) if now < entry.fresh_until else None
        if self._uncacheable.get(request.key, 0.0) <= time.monotonic():
            return None
        outcome = run(_without_conditions(headers))
        if outcome is None:
            return None
        answer, result = self._settle(request, outcome, now)
        if result == _STORED:
            self._uncacheable.pop(request.key, None)
        return answer

    def _lookup(
        self, function: LiveFunction, method: str, path: str, query: str, headers: Headers
    ) -> tuple[_Request, Entry | None]:
        """The request's keys, and its entry in this worker's memory tier if any."""
        assert function.cache_id is not None
        host = next((v.lower() for n, v in headers if n.lower() == "host"), "")
        base = key("response", function.cache_id, host, path, normalise_query(query))
        entry, where = locate(self.store, base, headers, disk=False)
        return _Request(function, method, path, headers, base, where), entry

    # -- lookups -----------------------------------------------------------

    def _locate(self, request: _Request, disk: bool = True) -> tuple[Entry | None, str]:
        return locate(self.store, request.base, request.headers, disk=disk)

    async def _locate_on_disk(self, request: _Request) -> tuple[Entry | None, str]:
        # Threads of their own: a slow disk must not hold up the default
        # executor's other work, nor a burst of misses take every thread.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, self._locate, request)

    # -- runs --------------------------------------------------------------

    async def _run_once(self, request: _Request, stale: Entry | None, run: Run) -> Cached:
        """Run the function for `request`, unless a run for its key is under way
        (in this worker or another of the node's): then wait for it and answer
        from what it stored. If that run failed, or its response could not be
        stored, every waiter runs at once (and, when the response can never be
        stored, later requests for the key skip the wait for a while)."""
        waited = False
        deadline = time.monotonic() + self.wait  # for all the runs it waits for
        while (running := self._running.get(request.key)) is not None:
            if not waited:
                self.metrics.coalesced.labels(request.function.name).inc()
                waited = True
            try:
                result = await asyncio.wait_for(
                    asyncio.shield(running), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                return (await self._run(request, stale, run))[0]
            entry, _ = self._locate(request, disk=False)
            now = time.time()
            if entry is not None and now < entry.fresh_until:
                return self._answer(entry, "HIT", request.headers, now)
            stale = entry or stale
            if result != _STORED:
                # Nothing to share: each runs for itself, at once. After a failure
                # too: a function that times out must not make its waiters queue
                # one timeout after another.
                return (await self._run(request, stale, run))[0]
        if self._uncacheable.get(request.key, 0.0) > time.monotonic():
            return (await self._run(request, stale, run))[0]
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._running[request.key] = done
        result = _FAILED
        held = None

        def release(result: str) -> None:
            """Tell the waiters what became of the run: at its end, or as soon as
            its response streams (it will not be stored, and may last long)."""
            if done.done():
                return
            del self._running[request.key]
            done.set_result(result)
            if result == _UNCACHEABLE:
                if len(self._uncacheable) >= _UNCACHEABLE_KEYS:
                    self._uncacheable.clear()
                self._uncacheable[request.key] = time.monotonic() + _UNCACHEABLE_SECONDS
            if held is not None:
                self._unlock_when_written(held)

        try:
            held, answer = await self._node_lock(request, counted=waited)
            if answer is not None:
                result = _STORED
                return answer
            answer, result = await self._run(request, stale, run, release)
            return answer
        finally:
            release(result)

    async def _node_lock(
        self, request: _Request, counted: bool
    ) -> tuple[Held | None, Cached | None]:
        """The node-wide lock on the key, or the answer another worker's run of
        it stored meanwhile (`HIT`); (None, None) when there are no such locks or
        the wait for one ran out (the function then runs all the same)."""
        locks = self.locks
        if locks is None:
            return None, None
        held = locks.try_lock(request.key)
        if held is not None:
            return held, None
        if not counted:
            self.metrics.coalesced.labels(request.function.name).inc()
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            held = locks.try_lock(request.key)
            # Looked up after trying the lock: the holder unlocks once its
            # entry is on disk, so a free lock and no entry mean none is coming.
            entry, _ = await self._locate_on_disk(request)
            now = time.time()
            if entry is not None and now < entry.fresh_until:
                if held is not None:
                    locks.unlock(held)
                return None, self._answer(entry, "HIT", request.headers, now)
            if held is not None:
                return held, None
        return None, None

    def _unlock_when_written(self, held: Held) -> None:
        """Unlock the key once what its run stored is on disk, where the node's
        other workers look for it; the answer does not wait, nor does a thread."""
        locks = self.locks
        assert locks is not None
        # Unlocked from the disk tier's writer thread: the lock is a file and a
        # descriptor, no state of the event loop's (which may be closed by then).
        self.store.after_writes(lambda: locks.unlock(held))

    async def _run(
        self,
        request: _Request,
        stale: Entry | None,
        run: Run,
        release: Callable[[str], None] | None = None,
    ) -> tuple[Cached, str]:
        """The function's answer (or the stale copy's, if it failed within the
        entry's stale-if-error), and what became of it: stored, uncacheable or
        failed. `release(result)` tells requests waiting for the run, when its
        response streams, what it will be."""
        ask = _without_conditions(request.headers)
        streams = None
        if stale is not None:
            ask += validators(stale.etag, stale.last_modified)
        else:  # a stale copy may yet answer instead, or be revalidated: never streamed
            streams = self._streams(request, release)
        # Stored as of now, not of when the run ends: a purge that lands while the
        # function runs must remove what this run computed from what it purged.
        started = time.time()
        try:
            outcome = await run(request.method, ask, streams)
        except (GatewayError, SandboxError) as exc:
            if stale is not None and exc.status >= 500 and _within_error_window(stale):
                answer = self._answer(stale, "STALE", request.headers, time.time())
                return replace(answer, error=exc), _FAILED
            raise
        response = outcome.response
        if response.status >= 500 and stale is not None and _within_error_window(stale):
            answer = self._answer(stale, "STALE", request.headers, time.time())
            return replace(answer, outcome=outcome), _FAILED
        if response.status == 304 and stale is not None:
            refreshed = self._refresh(request, stale, response.headers, started)
            if refreshed is None:
                # The 304 made the copy unstorable: ask for the whole response, for
                # a client that never asked a conditional question.
                return await self._run(request, None, run, release)
            answer = self._answer(refreshed, "REVALIDATED", request.headers, time.time())
            return replace(answer, outcome=outcome), _STORED
        return self._settle(request, outcome, started)

    def _streams(self, request: _Request, release: Callable[[str], None] | None) -> Streams:
        """Whether a streamed response of `request`'s run may stream: only if it will
        not be stored, as `_settle` decides for a whole one."""
        loop = asyncio.get_running_loop()

        def streams(status: int, headers: Headers) -> bool:
            if status >= 500:  # failed: `_settle` answers it whole
                return False
            if request.method == "GET":
                if decide("GET", request.headers, status, headers) is not None:
                    return False
                result = _UNSTORED if _authorized(request.headers) else _UNCACHEABLE
            else:
                result = _UNSTORED
            if release is not None:
                loop.call_soon_threadsafe(release, result)
            return True

        return streams

    def _settle(self, request: _Request, outcome: Outcome, started: float) -> tuple[Cached, str]:
        """A run's response, stored if it may be, and what became of it (no stale
        copy to fall back on or revalidate)."""
        response = outcome.response
        if response.status >= 500:
            return Cached(
                "MISS", response.status, response.headers, response.body, outcome
            ), _FAILED
        freshness = None
        if request.method == "GET":
            freshness = decide("GET", request.headers, response.status, response.headers)
        entry = self._store(request, response, started, freshness) if freshness else None
        if entry is None:
            # For good when the response alone said no: of a GET's own headers only
            # `Authorization` weighs in `decide`.
            never = (
                request.method == "GET" and freshness is None and not _authorized(request.headers)
            )
            return Cached(
                "MISS", response.status, response.headers, response.body, outcome
            ), _UNCACHEABLE if never else _UNSTORED
        if not_modified(request.headers, entry.etag, entry.last_modified):
            # The client asked conditionally; the function was asked for the whole
            # response, to store it. Answer the client's question from that.
            return replace(
                self._answer(entry, "MISS", request.headers, time.time()), outcome=outcome
            ), _STORED
        return Cached("MISS", response.status, response.headers, response.body, outcome), _STORED

    def _refresh_later(self, request: _Request, stale: Entry, run: Run) -> None:
        """One background run refreshes a stale entry (stale-while-revalidate)."""
        if request.key in self._running:
            return

        async def refresh() -> None:
            try:
                await self._run_once(replace(request, method="GET"), stale, run)
            except Exception as exc:  # the stale copy keeps being served meanwhile
                log.warning(
                    "refreshing a cached response of %s failed: %s", request.function.name, exc
                )

        self._background(refresh())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # a task nothing refers to may be collected mid-way
        task.add_done_callback(self._tasks.discard)

    # -- stores ------------------------------------------------------------

    def _store(
        self, request: _Request, response: Response, now: float, freshness: Freshness | None = None
    ) -> Entry | None:
        return keep(
            self.store,
            request.base,
            request.headers,
            response.status,
            response.headers,
            response.body,
            now,
            function=request.function.name,
            path=request.path,
            negotiated=True,
            freshness=freshness,
        )

    def _refresh(
        self, request: _Request, stale: Entry, headers: Sequence[tuple[str, str]], now: float
    ) -> Entry | None:
        """The stale entry made fresh again by the function's 304 (RFC 9111 4.3.4)."""
        merged = freshened(stale.headers, headers)
        freshness = decide("GET", request.headers, stale.status, merged)
        if freshness is None:
            self.store.delete(request.base)
            return None
        return self._store(
            request, Response(stale.status, list(freshness.headers), stale.body), now
        )

    # -- answers -----------------------------------------------------------

    def _answer(self, entry: Entry, status: str, headers: Headers, now: float) -> Cached:
        age = ("age", str(entry.age(now)))
        if not_modified(headers, entry.etag, entry.last_modified):
            return Cached(status, 304, [*not_modified_headers(entry.headers), age], b"")
        return Cached(status, entry.status, [*entry.headers, age], entry.body)


def _without_conditions(headers: Headers) -> Headers:
    """The request's headers less its own conditions: a run is asked for the whole
    response, to store it, and the client's question is answered from that."""
    return [(n, v) for n, v in headers if n.lower() not in _CONDITIONAL]


def _authorized(headers: Headers) -> bool:
    """Whether the request has `Authorization`, which keeps a shared cache from
    storing a response `decide` would otherwise allow (RFC 9111 3.5)."""
    return any(n.lower() == "authorization" for n, _ in headers)


def _within_error_window(entry: Entry) -> bool:
    return time.time() < entry.fresh_until + entry.stale_if_error
