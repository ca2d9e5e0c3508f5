"""The public listener: function traffic, routed by longest prefix, plus health."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgefn_runtime import LOOP_TOKEN, MAX_LOOPS, Outcome, SandboxError, Usage
from edgefn_runtime import Request as SandboxRequest
from edgefn_runtime import Response as SandboxResponse

from ._access import AccessEntry, access_log, log_access
from ._admission import Admission
from ._answers import USAGE_HEADER, stream_head, to_http
from ._bodies import BodyBudget, BodyStream, read_body, refuse_declared
from ._cache import CACHE_HEADER, ResponseCache
from ._errors import GatewayError, error_response
from ._fairness import FairThreadPool
from ._functions import FunctionTable, LiveFunction, warm_up
from ._logs import LogSink
from ._metrics import Metrics
from ._request_ids import request_id
from ._streams import (
    CLOSE_EXTENSION,
    GONE_EXTENSION,
    ClientStream,
    StreamBudget,
    StreamedAnswer,
    Streams,
)
from ._target import route
from .policy import Policy

__all__ = ["ROUTE_HEADER", "Lifecycle", "PublicApp", "health_routes"]

log = logging.getLogger("edgefn.gateway")

# Tells the function which route prefix it was reached under.
ROUTE_HEADER = "x-edgefn-route"
# Request headers only the gateway sets: a client's are dropped, so a function
# can trust what it reads under this prefix.
PLATFORM_HEADERS = b"x-edgefn-"
# What a worker's streamed responses may hold, all together, past each one's own
# backlog, before their functions wait for their clients (`_streams.py`).
STREAM_BUDGET = 64 * 2**20
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Lifecycle:
    """`/readyz` is green once every active version is loaded, red again while draining."""

    table: FunctionTable
    draining: bool = False
    warm: bool = False

    @property
    def ready(self) -> bool:
        return self.table.ready.is_set() and self.warm and not self.draining


@dataclass
class _Exchange:
    """What one request did, gathered for its access line, logs and metrics."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    path: str = ""
    function: LiveFunction | None = None
    usage: Usage = field(default_factory=Usage)
    logs: list[str] = field(default_factory=list)
    queued: float = 0.0
    bytes_in: int = 0
    body_read: bool = False
    outcome: str = "ok"
    cache: str = ""  # X-Edgefn-Cache, once a function was found
    method: str = ""  # when not the request's own (a background refresh is a GET)
    ran: bool = False  # the function was run (not answered from the cache)
    stream: ClientStream | None = None  # where a streamed response goes

    def refused(self, exc: GatewayError | SandboxError) -> Response:
        """The error's response; its outcome, and a function's usage and logs, kept."""
        self.outcome = exc.code
        if isinstance(exc, SandboxError):
            self.usage, self.logs = exc.usage, exc.logs
        return error_response(exc, self.request_id)


def health_routes(lifecycle: Lifecycle, for_deploys: bool = False) -> list[Route]:
    """`/healthz` and `/readyz`. The admin listener's `/readyz` (`for_deploys`) is
    also red while the registry is unreachable: serving goes on, deploys cannot."""

    def answer(request: Request, status: str, code: int = 200) -> Response:
        # Like every response, with the request's id (a prober may send its own).
        rid = request_id(request.headers.get("x-request-id"))
        return JSONResponse({"status": status}, status_code=code, headers={"x-request-id": rid})

    async def healthz(request: Request) -> Response:
        return answer(request, "alive")

    async def readyz(request: Request) -> Response:
        registry_down = for_deploys and not lifecycle.table.registry_available
        if lifecycle.ready and not registry_down:
            return answer(request, "ready")
        reason = "draining" if lifecycle.draining else "loading functions"
        if registry_down:
            reason = "registry unavailable"
        return answer(request, reason, 503)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


class PublicApp:
    """The public ASGI app: runs each request in its function's sandbox, off the
    event loop, behind the policy's backpressure. Its dependencies are passed in:
    the function table, the log sink, the operator's policy, the worker's
    lifecycle (None: no health routes, no warm-up), the metrics to update and the
    edge cache (None: every request runs its function)."""

    def __init__(
        self,
        table: FunctionTable,
        logs: LogSink,
        policy: Policy,
        lifecycle: Lifecycle | None,
        metrics: Metrics,
        cache: ResponseCache | None = None,
    ) -> None:
        self.table = table
        self.cache = cache
        self.logs = logs
        self.policy = policy
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.pid = os.getpid()  # built in its worker process, so this one's
        self.admission = Admission(
            policy.global_concurrency, policy.queue_length, policy.queue_wait
        )
        # A C-level queue hands work to the threads, as in concurrent.futures; anyio's
        # Condition-based one cost a thread wake-up in Python on every request.
        self.threads = FairThreadPool(policy.global_concurrency)
        self.bodies = BodyBudget(policy.body_budget, policy.queue_wait)
        self.streams = StreamBudget(STREAM_BUDGET)
        routes = health_routes(lifecycle) if lifecycle is not None else []
        self.health = Starlette(routes=routes, lifespan=self._lifespan)
        self.reserved = {route.path for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Function traffic skips Starlette's router and middleware stack, which
        # were 15 % of a worker's time for a trivial function; health checks
        # and the lifespan still go through it.
        if scope["type"] != "http" or scope["path"] in self.reserved:
            await self.health(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self.handle(request, send)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when the drain timeout expires: the
            # client gets the gateway's own answer, not a bare 500 and a traceback.
            if self.lifecycle is None or not self.lifecycle.draining:
                raise
            error = GatewayError(
                503, "shutting_down", "the gateway stopped before the function finished"
            )
            response = error_response(error, request_id(request.headers.get("x-request-id")))
        except Exception as exc:  # a bug: logged, answered as a bare 500
            response = self._bug(exc, request.headers)
        await response(scope, receive, send)

    async def handle(self, request: Request, send: Send | None = None) -> Response:
        """The response to one function request, recorded (access line, logs, metrics).
        With `send`, a response the function streams is sent as it is produced."""
        exchange = _Exchange(request_id(request.headers.get("x-request-id")))
        exchange.path = request.scope["path"]
        try:
            if request.method not in _METHODS:
                allowed = ", ".join(_METHODS)
                raise GatewayError(
                    405,
                    "method_not_allowed",
                    f"method {request.method} is not served (allowed: {allowed})",
                    {"allow": allowed},
                )
            response = await self._run(request, exchange, send)
        except (GatewayError, SandboxError) as exc:
            response = exchange.refused(exc)
        except BaseException:  # cancelled (see `__call__`), or a bug
            if exchange.stream is not None:
                exchange.stream.abort()  # begun, its status is out: no other answer follows
            raise
        unread = not exchange.body_read and _has_body(request.headers)
        if exchange.stream is not None and exchange.stream.started:
            # Its head is out: what is left is to end it, or cut it off on a failure.
            response = StreamedAnswer(exchange.stream, complete=exchange.outcome == "ok")
            close = request.scope.get("extensions", {}).get(CLOSE_EXTENSION)
            if unread and close is not None:
                close()  # as below, once the response is out
        elif unread:
            # Answered before its body was read to its end (too large, no route, no
            # room, a function that read part of it): close rather than read the rest.
            response.headers["connection"] = "close"
        self._record(request.method, response, exchange)
        return response

    def answer_now(
        self, path: str, raw_path: bytes, query: bytes, raw_headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        """The response to a GET without a body, made at once, or None: then the
        request goes through the ASGI app (`__call__`), as it would have.

        Why: for a short request run on the event loop (`Sandbox.invoke_now`), the
        ASGI cycle around it (a task, the scope, Starlette's request and response,
        two socket writes) cost more than the call: a `reuse` hello took 751 µs of
        a worker's CPU instead of 959-1,022, at 0.49x FastAPI's requests/s instead
        of 0.28-0.30x (`bench/gateway.py`). The protocol (`_http.py`) asks here
        first and writes the answer in one go. Only what needs no wait is answered:
        an instance ready on the loop, no request of the worker waiting, a fresh
        entry in this worker's cache or a key the cache knows it cannot store.
        Every other request, and every refusal (404, 400 `bad_path`, 508,
        `starting`), takes the ASGI path unchanged."""
        headers = Headers(raw=raw_headers)
        try:
            return self._answer_now(path, raw_path, query, headers)
        except Exception as exc:  # a bug: as `__call__` answers it
            return self._bug(exc, headers)

    def _stream(
        self,
        request: Request,
        send: Send,
        exchange: _Exchange,
        accepts: Streams | None = None,
        source: BodyStream | None = None,
    ) -> ClientStream:
        """Where the function's response goes if it streams it, while it reads its
        body from `source` if given. (Not a closure over `exchange`, which holds
        the stream: a cycle per request is the cyclic collector's, whose pauses
        were p99's, see `_http.py`.)"""
        head = functools.partial(stream_head, exchange.request_id, exchange.cache)
        receive = request.receive if source is None else source.receive_after_body
        return ClientStream(request.scope, receive, send, head, self.streams, accepts)

    def _bug(self, exc: Exception, headers: Headers) -> Response:
        """A gateway bug's answer: logged, a bare 500, counted."""
        self.metrics.requests.labels("", "500", "internal_error").inc()
        return error_response(exc, request_id(headers.get("x-request-id")))

    def _answer_now(
        self, path: str, raw_path: bytes, query: bytes, headers: Headers
    ) -> Response | None:
        lifecycle = self.lifecycle
        if not self.table.ready.is_set() or (lifecycle is not None and lifecycle.draining):
            return None
        admission = self.admission
        if admission.queued or admission.total_in_flight:
            # Requests wait on threads or in the queue: answering others on the
            # loop one after another would keep the GIL from them. (Requests that
            # instantiated on threads at each retirement of the loop's instance
            # took 28-567 ms for 0.3-0.8 ms of work, before `Sandbox` made its
            # successor ahead.) Through the app, the loop lets them run. Asked
            # first: what falls through is routed again there.
            return None
        if path in self.reserved:  # health checks: Starlette's routes
            return None
        if _has_body(headers) or _loops(headers) >= MAX_LOOPS:
            return None
        try:
            target = {"raw_path": raw_path, "query_string": query}
            found = route(target, self.table.match, _route_of)
        except GatewayError:
            return None
        if found is None:
            return None
        function, relative, query_text = found
        exchange = _Exchange(request_id(headers.get("x-request-id")), path=path, function=function)
        call_headers = _headers(headers, function)

        def run(asked: list[tuple[str, str]]) -> Outcome | None:
            exchange.ran = True
            call = SandboxRequest("GET", relative, query_text, asked, b"")
            outcome = function.sandbox.invoke_now(call, function.limits)
            if outcome is not None:
                exchange.usage, exchange.logs = outcome.usage, outcome.logs
            return outcome

        cache = self.cache
        try:
            if cache is not None and cache.applies("GET", function):
                cached = cache.answer_now(function, relative, query_text, call_headers, run)
                if cached is None:
                    return None
                exchange.body_read, exchange.cache = True, cached.status
                answer = SandboxResponse(cached.code, cached.headers, cached.body)
            else:
                exchange.body_read, exchange.cache = True, "BYPASS"
                outcome = run(call_headers)
                if outcome is None:
                    return None
                answer = outcome.response
            response = to_http(answer, exchange.request_id)
        except SandboxError as exc:
            response = exchange.refused(exc)
        self._record("GET", response, exchange)
        return response

    async def _run(self, request: Request, exchange: _Exchange, send: Send | None) -> Response:
        if not self.table.ready.is_set():
            # Not a 404: this worker has not loaded the registry yet.
            raise GatewayError(
                503,
                "starting",
                "the gateway is still loading functions; retry shortly",
                {"retry-after": "1"},
            )
        if _loops(request.headers) >= MAX_LOOPS:
            raise GatewayError(
                508,
                "loop_detected",
                f"the request has passed through edgefn {MAX_LOOPS} times (CDN-Loop): "
                "functions fetching each other in a loop",
            )
        found = route(request.scope, self.table.match, _route_of)
        if found is None:
            raise GatewayError(404, "no_route", f"no function is deployed at {exchange.path}")
        function, path, query = found
        exchange.function = function
        cache = self.cache
        bodiless = not _has_body(request.headers)
        if cache is not None and cache.applies(request.method, function) and bodiless:
            return await self._cached(cache, request, function, path, query, exchange, send)
        exchange.cache = "BYPASS"
        limit = function.limits.max_body
        if function.streams_body and _has_body(request.headers):
            # Read as it arrives (`_bodies.py`): nothing held yet, nothing to wait for.
            refuse_declared(request, limit)
            gone = request.scope.get("extensions", {}).get(GONE_EXTENSION)
            source = BodyStream(request.receive, gone)
            try:
                return await self._call(request, function, path, query, b"", exchange, send, source)
            finally:
                exchange.bytes_in, exchange.body_read = source.received, source.ended
        async with read_body(request, limit, self.bodies) as body:
            exchange.bytes_in, exchange.body_read = len(body), True
            return await self._call(request, function, path, query, body, exchange, send)

    async def _call(
        self,
        request: Request,
        function: LiveFunction,
        path: str,
        query: str,
        body: bytes,
        exchange: _Exchange,
        send: Send | None,
        source: BodyStream | None = None,
    ) -> Response:
        """Run the function on the request, its body `body` or read from `source`."""
        call = SandboxRequest(
            request.method, path, query, _headers(request.headers, function), body
        )
        if send is not None:
            exchange.stream = self._stream(request, send, exchange, source=source)
        outcome = await self._execute(function, call, exchange, source)
        return to_http(outcome.response, exchange.request_id)

    async def _cached(
        self,
        cache: ResponseCache,
        request: Request,
        function: LiveFunction,
        path: str,
        query: str,
        exchange: _Exchange,
        send: Send | None,
    ) -> Response:
        """A GET or HEAD through the edge cache: the function runs only when the
        cache has no answer (see `_cache.py`)."""
        exchange.body_read, exchange.cache = True, "MISS"

        async def run(
            method: str, headers: list[tuple[str, str]], streams: Streams | None
        ) -> Outcome:
            call = SandboxRequest(method, path, query, headers, b"")
            if send is not None and streams is not None:
                exchange.stream = self._stream(request, send, exchange, streams)
            return await self._execute(function, call, exchange)

        async def refresh(
            method: str, headers: list[tuple[str, str]], _: Streams | None
        ) -> Outcome:
            # Its own request id, access line, logs and metrics (cache "REFRESH").
            background = _Exchange(request_id(None), path=exchange.path, function=function)
            background.cache, background.method = "REFRESH", method
            call = SandboxRequest(method, path, query, headers, b"")
            try:
                outcome = await self._execute(function, call, background)
            except (GatewayError, SandboxError) as exc:
                self._record(method, error_response(exc, background.request_id), background)
                raise
            self._record(method, to_http(outcome.response, background.request_id), background)
            return outcome

        answer = await cache.serve(
            function, request.method, path, query, _headers(request.headers, function), run, refresh
        )
        exchange.cache = answer.status
        if answer.error is not None:  # served stale: the failure is still this request's
            exchange.outcome = answer.error.code
            if isinstance(answer.error, SandboxError):
                exchange.usage, exchange.logs = answer.error.usage, answer.error.logs
        return to_http(
            SandboxResponse(answer.code, answer.headers, answer.body), exchange.request_id
        )

    async def _execute(
        self,
        function: LiveFunction,
        call: SandboxRequest,
        exchange: _Exchange,
        source: BodyStream | None = None,
    ) -> Outcome:
        metrics = self.metrics
        exchange.ran = True
        metrics.queued.inc()
        try:
            async with self.admission.slot(function.name, function.concurrency) as queued:
                metrics.queued.dec()
                exchange.queued = queued
                if exchange.stream is not None:
                    exchange.stream.queued = queued
                with metrics.in_flight.labels(function.name).track_inprogress():
                    # On the loop when known to be short: the hand-off to a thread
                    # and back cost more than such a request (`_inline.py`).
                    outcome = None
                    if source is None:
                        outcome = function.sandbox.invoke_now(call, function.limits)
                    if outcome is None:
                        outcome = await asyncio.get_running_loop().run_in_executor(
                            self.threads,
                            function.sandbox.invoke,
                            call,
                            function.limits,
                            exchange.stream,
                            source,
                        )
        except GatewayError:
            metrics.queued.dec()
            raise
        exchange.usage, exchange.logs = outcome.usage, outcome.logs
        return outcome

    def _record(self, method: str, response: Response, exchange: _Exchange) -> None:
        """Timings and usage headers, the access line, function logs, metrics."""
        usage, function = exchange.usage, exchange.function
        server_timing = ""
        if exchange.ran or not exchange.cache:
            timing = (
                ("queue", exchange.queued),
                ("instantiate", usage.instantiate_seconds),
                ("execute", usage.execute_seconds),
                *((("fetch", usage.fetch_seconds),) if usage.fetches else ()),
                *((("kv", usage.kv_seconds),) if usage.kv_ops else ()),
            )
            server_timing = ", ".join(f"{n};dur={seconds * 1000:.2f}" for n, seconds in timing)
        raw = response.raw_headers
        if exchange.cache:
            # A hit ran nothing: its timing is the cache's alone.
            raw.append((CACHE_HEADER.encode(), exchange.cache.encode()))
            cache = f"cache;desc={exchange.cache.lower()}"
            server_timing = f"{cache}, {server_timing}" if server_timing else cache
        # Appended, not set: neither header can be there yet (`_to_http` drops a
        # function's, error responses have none), and setting one scans them all.
        raw.append((b"server-timing", server_timing.encode()))
        if self.policy.usage_header and function is not None:
            response.headers[USAGE_HEADER] = f"fuel={usage.fuel}" + (
                f", fetches={usage.fetches}, fetch_bytes={usage.fetch_bytes}"
                if usage.fetches
                else ""
            )
        stream = exchange.stream
        entry = AccessEntry(
            time=time.time(),
            request_id=exchange.request_id,
            function=function.name if function else None,
            version=function.version if function else None,
            method=exchange.method or method,
            path=exchange.path,
            status=response.status_code,
            outcome=exchange.outcome,
            queue_ms=round(exchange.queued * 1000, 3),
            instantiate_ms=round(usage.instantiate_seconds * 1000, 3),
            execute_ms=round(usage.execute_seconds * 1000, 3),
            total_ms=round((time.perf_counter() - exchange.started) * 1000, 3),
            fuel=usage.fuel,
            fetches=usage.fetches,
            fetch_ms=round(usage.fetch_seconds * 1000, 3),
            fetch_bytes=usage.fetch_bytes,
            kv_ops=usage.kv_ops,
            kv_ms=round(usage.kv_seconds * 1000, 3),
            cache=exchange.cache,
            bytes_in=exchange.bytes_in,
            bytes_out=stream.handed
            if stream is not None and stream.started
            else len(response.body),
            worker=self.pid,
        )
        line = entry.json()
        log_access(entry, line)
        # Every request is counted, also those refused before a function was found
        # (`no_route`, `bad_path`, 405, `starting`): under `function=""`, never the
        # path, which would give each client-chosen path its own series.
        self.metrics.count(
            self.metrics.requests, entry.function or "", str(entry.status), entry.outcome
        )
        if function is not None:
            self.logs.add(function.name, exchange.request_id, "log", exchange.logs)
            self.logs.add(function.name, exchange.request_id, "access", [line])
            if exchange.ran:
                _observe(self.metrics, function.name, usage, exchange.queued)
            if exchange.cache:
                self.metrics.count(self.metrics.cache, function.name, exchange.cache)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # The server starts accepting connections only after this.
        if self.lifecycle is not None:
            await _warm_up(self.lifecycle, self.threads, self.metrics, self.cache)
        yield


async def _warm_up(
    lifecycle: Lifecycle, threads: FairThreadPool, metrics: Metrics, cache: ResponseCache | None
) -> None:
    """Once every function is loaded, run one more throwaway request through each,
    this time on a request thread, create every metric file and open the edge
    cache's, so the first real request finds them ready: as fast as the tenth.
    The public listener opens only after this."""
    while not lifecycle.table.ready.is_set():
        if lifecycle.draining:  # stopped before it was ever ready
            return
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    for function in lifecycle.table.functions():
        # The table already warmed the sandbox on its own thread; this one runs
        # on a request thread, which also starts that thread and lets wasmtime
        # set up its per-thread state before a real request needs it.
        await loop.run_in_executor(threads, warm_up, function.sandbox, function.limits)
        for family in (
            metrics.in_flight,
            metrics.queue,
            metrics.instantiate,
            metrics.execute,
            metrics.fuel,
            metrics.pixels,
            metrics.outbound_seconds,
            metrics.outbound_bytes,
            metrics.coalesced,
            metrics.kv_seconds,
        ):
            family.labels(function.name)
        metrics.requests.labels(function.name, "200", "ok")
        for status in ("MISS", "HIT", "BYPASS"):
            metrics.cache.labels(function.name, status)
        metrics.outbound.labels(function.name, "2xx")
    access_log()
    if cache is not None:
        await cache.warm_up()
    # Startup leaves many objects behind; collect once now and exempt the survivors
    # from later collections, so no early request pays for a full pass (seen as
    # 9-11 ms first requests after a restart).
    gc.collect()
    gc.freeze()
    lifecycle.table.engine.settled()
    lifecycle.warm = True


def _loops(headers: Headers) -> int:
    """How many times the request says it passed through edgefn (RFC 8586)."""
    values = headers.getlist("cdn-loop")
    if not values:
        return 0
    members = ",".join(values).split(",")
    return sum(member.split(";", 1)[0].strip().lower() == LOOP_TOKEN for member in members)


def _observe(metrics: Metrics, function: str, usage: Usage, queued: float) -> None:
    child = metrics.child
    child(metrics.queue, function).observe(queued)
    # A reused instance is instantiated once, then only executes: every request
    # has an execute time, only fresh instances an instantiate time.
    if usage.instantiate_seconds:
        child(metrics.instantiate, function).observe(usage.instantiate_seconds)
    child(metrics.execute, function).observe(usage.execute_seconds)
    metrics.count(metrics.fuel, function, amount=usage.fuel)
    if usage.image_pixels:  # each increment takes a lock and writes the file
        metrics.count(metrics.pixels, function, amount=usage.image_pixels)
    if usage.fetches:
        for outcome, count in usage.fetch_outcomes.items():
            metrics.outbound.labels(function, outcome).inc(count)
        metrics.outbound_seconds.labels(function).observe(usage.fetch_seconds)
        metrics.outbound_bytes.labels(function).inc(usage.fetch_bytes)
    if usage.kv_ops:
        for (operation, result), count in usage.kv_outcomes.items():
            metrics.count(metrics.kv, function, operation, result, amount=count)
        metrics.kv_seconds.labels(function).observe(usage.kv_seconds)


def _route_of(function: LiveFunction) -> str:
    return function.route


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return length not in (None, "0") or "transfer-encoding" in headers


def _headers(given: Headers, function: LiveFunction) -> list[tuple[str, str]]:
    """The request headers the function sees: the client's, less the gateway's own
    prefix, plus the route it was reached under."""
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in given.raw
        if not k.lower().startswith(PLATFORM_HEADERS)
    ]
    headers.append((ROUTE_HEADER, function.route))
    return headers
