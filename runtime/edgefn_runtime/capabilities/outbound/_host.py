"""The outbound capability: `edgefn:http/outbound` for guests.

A function reaches only the hosts its manifest declares (`AllowedHosts`, its
grant), through addresses the operator's `OutboundPolicy` does not block, with
per-request caps on fetches and bytes, and never past the request's deadline:
wasmtime's epoch deadline does not fire while the host waits on a socket, so
every fetch is bounded by what the request has left, and one that runs into it
ends the request as the `Timeout` it is.

The request body comes out of band (the guest's stdout, as image bytes do),
and the response body goes back the same way request bodies go in: a file the
guest reads, `/.edgefn/fetch`.

Given the node's `HttpCache`, GETs are answered from it while the origin's
`Cache-Control` allows (`_cache.py`), after the same checks as any fetch: the
URL is allowed, the fetch counts against `max_fetches`, its body against the
byte caps and the fuel.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import wasmtime
from wasmtime import component as wc

from edgefn_contract.outbound import METHODS

from ..._contract import CONTRACT_VERSION
from ..._errors import FuelExhausted, Timeout
from ..._handle_call import decode_headers, encode_headers, valid_field
from ..._messages import LOOP_TOKEN, WARM_UP_HEADER, Usage
from ...cache import HttpCache
from .._base import Capability, Fuel, RequestContext, host_call
from ._cache import Found, OriginCache, served_headers
from ._client import Budget, Client, Fetched
from ._policy import AllowedHosts, OutboundFailure, OutboundPolicy, Target

__all__ = ["OUTBOUND_IMPORT", "OutboundCapability", "Outgoing", "fetch_for"]

OUTBOUND_IMPORT = f"edgefn:http/outbound@{CONTRACT_VERSION}"
log = logging.getLogger("edgefn.outbound")

# Fuel a fetch costs before any byte, so a guest fetching in a loop pays for the
# host's work (about what the image capability's probe costs), then a unit a byte.
_FETCH_FUEL = 1_000_000
_MAX_HEADERS = 100
_MAX_HEADER_BYTES = 64 * 1024
# Set by the host from the URL and the body, or meaningful for one hop only.
_DROPPED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "cdn-loop",  # the host's, so that loops are found whatever the function sends
    }
)
_INCOMING = frozenset({WARM_UP_HEADER, "traceparent", "tracestate"})
# W3C Trace Context: version 00's four fields (later versions may append more).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True)
class Outgoing:
    """A request a function asks the host to send (the WIT `outgoing-request`)."""

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    timeout: float | None = None  # seconds for the whole fetch; None: the policy's
    cache: bool = False  # a GET may be answered from the origin cache


@dataclass
class OutboundState:
    """One request's outbound work so far."""

    capability: OutboundCapability
    calls: int = 0  # fetches the function (or Image.from_url) asked for
    received: int = 0  # response body bytes, all fetches together, cached ones included
    cached_bytes: int = 0  # of those, the ones the origin cache answered
    cache_hits: int = 0  # answered from the origin cache without asking the origin
    cache_revalidated: int = 0  # the origin said 304: the stored body answered
    cache_stale: int = 0  # the origin failed: a stale copy answered (stale-if-error)
    seconds: float = 0.0
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    # (trace id, flags, tracestate) of the incoming request's W3C trace context.
    trace: tuple[str, str, str | None] | None = None
    # The gateway's warm-up request: loading a version must not reach an origin.
    warm_up: bool = False
    # The incoming request's `CDN-Loop` (RFC 8586), which every fetch extends.
    loop: str = ""

    def count(self, outcome: str) -> None:
        self.sent[outcome] += 1


class OutboundCapability(Capability):
    """Outbound HTTP under `policy` (the operator's); each function's grant is its
    `AllowedHosts`, passed to `Engine.load(grants={"outbound": ...})`.

    With `cache` (the node's, shared with the gateway's response cache), GETs
    are cached in the namespace of the fetching function, its grant
    `"function"` (its name): without one, nothing is cached for it."""

    name = "outbound"
    imports = frozenset({OUTBOUND_IMPORT})
    files = True

    def __init__(
        self, policy: OutboundPolicy | None = None, cache: HttpCache | None = None
    ) -> None:
        self.policy = policy or OutboundPolicy()
        self.stdout_reserve = self.policy.max_body_bytes
        self.client = Client(self.policy)
        enabled = cache is not None and cache.config.enabled
        self.origin_cache = OriginCache(cache) if cache is not None and enabled else None

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(OUTBOUND_IMPORT) as instance:
            instance.add_func("fetch", functools.partial(_fetch, self))

    def begin(self, context: RequestContext) -> OutboundState:
        if self.name not in context.grants:  # it will refuse every fetch: nothing to read
            return OutboundState(self)
        # The incoming headers that shape every fetch, in one pass: the first of
        # each, and every CDN-Loop line (each proxy on the way may add its own).
        seen: dict[str, str] = {}
        loop: list[str] = []
        for name, value in context.headers:
            lower = name.lower()
            if lower == "cdn-loop":
                loop.append(value.strip())
            elif lower in _INCOMING and lower not in seen:
                seen[lower] = value.strip()
        return OutboundState(
            self,
            trace=_trace_context(seen.get("traceparent"), seen.get("tracestate")),
            warm_up=WARM_UP_HEADER in seen,
            loop=", ".join(loop)[:4096],
        )

    def finish(self, state: OutboundState, usage: Usage) -> None:
        usage.fetches = sum(state.sent.values())
        usage.fetch_bytes = state.received - state.cached_bytes
        usage.fetch_cache_hits = state.cache_hits
        usage.fetch_cache_revalidated = state.cache_revalidated
        usage.fetch_cache_stale = state.cache_stale
        usage.fetch_seconds = state.seconds
        usage.fetch_outcomes = dict(state.sent)

    def fetch(self, context: RequestContext, fuel: Fuel, request: Outgoing) -> Fetched:
        """One fetch for the request `context`; raises `OutboundFailure`. A fetch that
        runs into the request's deadline or fuel also stops the guest (`context.stop`)."""
        state: OutboundState = context.states[self.name]
        try:
            return self._fetch(state, context, fuel, request)
        except OutboundFailure as failure:
            state.count(failure.kind)
            raise

    def _fetch(
        self, state: OutboundState, context: RequestContext, fuel: Fuel, request: Outgoing
    ) -> Fetched:
        method, url, body, timeout = request.method, request.url, request.body, request.timeout
        policy = self.policy
        allowed: AllowedHosts = context.grants.get(self.name) or AllowedHosts(())
        target = allowed.check(url)
        if state.warm_up:
            raise OutboundFailure("not_allowed", "no outbound HTTP in the warm-up request")
        if method not in METHODS:
            raise OutboundFailure(
                "not_allowed",
                f"method {method[:20]!r} cannot be sent (allowed: {', '.join(METHODS)})",
            )
        if state.calls >= policy.max_fetches:
            raise OutboundFailure(
                "not_allowed",
                f"this request already made {state.calls} fetches, the most the operator allows "
                "([outbound] max_fetches)",
            )
        if len(body) > policy.max_body_bytes:
            raise OutboundFailure(
                "too_large",
                f"the request body of {len(body):,} bytes is over the {policy.max_body_bytes:,} "
                "bytes the operator allows ([outbound] max_body_bytes)",
            )
        if not fuel.spend(_FETCH_FUEL):
            context.stop(fuel, _out_of_fuel(context))
            raise OutboundFailure("timeout", "the function has no fuel left for a fetch")
        state.calls += 1
        total_left = policy.max_total_bytes - state.received
        started = time.monotonic()
        own_deadline = started + timeout if timeout else float("inf")
        budget = Budget(
            deadline=min(context.deadline, own_deadline),
            max_bytes=min(policy.max_response_bytes, total_left),
            too_large=(
                f"the operator allows {policy.max_response_bytes:,} bytes a response "
                "([outbound] max_response_bytes)"
                if policy.max_response_bytes <= total_left
                else f"this request has {total_left:,} of its {policy.max_total_bytes:,} "
                "bytes left ([outbound] max_total_bytes)"
            ),
        )
        try:
            headers = self._headers(state, request.headers)
            function = context.grants.get("function")
            found = None
            if (
                self.origin_cache is not None
                and request.cache
                and method == "GET"
                and isinstance(function, str)
                and function
            ):
                found = self.origin_cache.find(function, target, request.headers)
            if found is None:
                fetched = self.client.fetch(
                    method, target, headers, body, allowed=allowed, budget=budget, sent=state.count
                )
            else:
                assert isinstance(function, str)
                fetched = self._cached(
                    state, function, target, request, headers, found, allowed, budget
                )
        except OutboundFailure as failure:
            if failure.kind == "timeout" and context.deadline <= min(
                own_deadline, time.monotonic()
            ):
                context.stop(
                    fuel,
                    Timeout(
                        f"a fetch ran past the function's wall-clock timeout of "
                        f"{context.limits.timeout:g} s: {failure.message}"
                    ),
                )
            raise
        finally:
            # Bytes read count, kept or refused part-way: the caps bound the transfer.
            state.seconds += time.monotonic() - started
            state.received += budget.received
            if context.breach is None and not fuel.spend(budget.received):
                context.stop(fuel, _out_of_fuel(context))
        return fetched

    def _cached(
        self,
        state: OutboundState,
        function: str,
        target: Target,
        request: Outgoing,
        headers: list[tuple[str, str]],
        found: Found,
        allowed: AllowedHosts,
        budget: Budget,
    ) -> Fetched:
        """A GET through the origin cache: fresh, from it without DNS or a
        connection; stale with validators, revalidated; else fetched and kept
        when HTTP allows."""
        cache = self.origin_cache
        assert cache is not None
        if found.fresh(cache.clock()):
            return _hit(state, found, target, budget, "cached", cache.clock())
        with cache.coalesced(found, budget.deadline) as again:
            if again:  # another fetch of it just finished: it may have kept it
                found = cache.find(function, target, request.headers) or found
                if found.fresh(cache.clock()):
                    return _hit(state, found, target, budget, "cached", cache.clock())
            conditional = found.conditional()
            try:
                fetched = self.client.fetch(
                    "GET",
                    target,
                    headers + conditional,
                    b"",
                    allowed=allowed,
                    budget=budget,
                    sent=state.count,
                )
            except OutboundFailure as failure:
                if failure.kind == "failed" and found.usable_on_error(cache.clock()):
                    return _hit(state, found, target, budget, "stale", cache.clock())
                raise
            if fetched.url != target.url:  # redirected: not cached (see _cache.py)
                if fetched.status == 304 and conditional:
                    # The validators were for what `target` answered before, not
                    # for what it redirects to now: the function never asked
                    # anything conditional, so it is asked again without them.
                    cache.cache.delete(found.key)
                    fetched = self.client.fetch(
                        "GET",
                        target,
                        headers,
                        b"",
                        allowed=allowed,
                        budget=budget,
                        sent=state.count,
                    )
                return fetched
            if fetched.status == 304 and conditional:
                status, kept, body = cache.revalidated(
                    found, function, request.headers, fetched.headers
                )
                state.cache_revalidated += 1
                return _served(state, status, kept, body, target, budget, age=0)
            if fetched.status >= 500 and found.usable_on_error(cache.clock()):
                return _hit(state, found, target, budget, None, cache.clock())
            cache.store(
                found, function, request.headers, fetched.status, fetched.headers, fetched.body
            )
            return fetched

    def _headers(
        self, state: OutboundState, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        if (
            len(headers) > _MAX_HEADERS
            or sum(len(k) + len(v) + 4 for k, v in headers) > _MAX_HEADER_BYTES
        ):
            raise OutboundFailure(
                "not_allowed",
                f"at most {_MAX_HEADERS} request headers of 64 KiB in all may be sent",
            )
        kept: list[tuple[str, str]] = []
        names = set()
        for name, value in headers:
            # HTTP/1.1 sends values as Latin-1: anything else cannot be encoded.
            if not valid_field(name, value) or (
                not value.isascii() and max(map(ord, value)) > 0xFF
            ):
                raise OutboundFailure("not_allowed", f"invalid request header {name[:100]!r}")
            lower = name.lower()
            if lower not in _DROPPED:
                kept.append((name, value))
                names.add(lower)
        if "user-agent" not in names:
            kept.append(("User-Agent", "edgefn"))
        kept.append(("CDN-Loop", f"{state.loop}, {LOOP_TOKEN}" if state.loop else LOOP_TOKEN))
        if state.trace is not None and "traceparent" not in names:
            # A child span of the incoming request's, so an origin's logs line up.
            trace_id, flags, tracestate = state.trace
            kept.append(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"))
            if tracestate and "tracestate" not in names:
                kept.append(("tracestate", tracestate))
        return kept


def fetch_for(context: RequestContext, fuel: Fuel, url: str) -> bytes:
    """GET `url` for another capability (an image `url` source), under the same
    grant, policy and caps as a guest's fetch, through the origin cache (an
    image's original is what it is for); anything but a 2xx is a failure."""
    state: OutboundState | None = context.states.get(OutboundCapability.name)
    if state is None:
        raise OutboundFailure("not_allowed", "outbound HTTP is not available on this host")
    fetched = state.capability.fetch(context, fuel, Outgoing("GET", url, cache=True))
    if not 200 <= fetched.status <= 299:
        shown = fetched.url.partition("?")[0]  # a query may carry a token (presigned URLs)
        raise OutboundFailure("failed", f"{shown} answered {fetched.status}")
    return fetched.body


def _hit(
    state: OutboundState,
    found: Found,
    target: Target,
    budget: Budget,
    outcome: str | None,
    now: float,
) -> Fetched:
    """The stored response answers: fresh ("cached"), or stale because the
    origin failed ("stale"; None: its 5xx was counted already)."""
    entry = found.entry
    assert entry is not None
    if outcome == "cached":
        state.cache_hits += 1
    else:
        state.cache_stale += 1
    if outcome is not None:
        state.count(outcome)
    return _served(state, entry.status, entry.headers, entry.body, target, budget, entry.age(now))


def _served(
    state: OutboundState,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    target: Target,
    budget: Budget,
    age: int,
) -> Fetched:
    """A stored body as the guest receives it: under the same byte caps as one
    the origin sends (the guest receives it all the same)."""
    if len(body) > budget.max_bytes:
        raise OutboundFailure(
            "too_large", f"the response is over {budget.max_bytes:,} bytes; {budget.too_large}"
        )
    budget.received += len(body)
    state.cached_bytes += len(body)
    return Fetched(status, served_headers(headers, body, age), body, target.url)


def _trace_context(
    parent: str | None, tracestate: str | None
) -> tuple[str, str, str | None] | None:
    """(trace id, flags, tracestate) of a valid W3C `traceparent`, else None."""
    tracestate = tracestate[:512] if tracestate else None
    match = _TRACEPARENT.fullmatch(parent) if parent else None
    if match is None or match[1] == "ff":
        return None
    version, trace_id, span_id, flags = match[1], match[2], match[3], match[4]
    if trace_id == "0" * 32 or span_id == "0" * 16 or (version == "00" and match[5]):
        return None
    return trace_id, flags, tracestate


def _out_of_fuel(context: RequestContext) -> FuelExhausted:
    return FuelExhausted(
        f"the function used all of its fuel ({context.limits.fuel:,} units) on outbound HTTP"
    )


# The sandbox's linker binding ------------------------------------------------


def _fetch(
    capability: OutboundCapability, store: wasmtime.StoreContext, request: Any
) -> wc.Variant:
    # An exception escaping a host function would trap the guest and resurface
    # through a process-wide slot in wasmtime-py: every one becomes an `err`
    # (but `host_call`'s, which traps on purpose).
    context, fuel = host_call(store)  # outside the `try`: see there
    try:
        # The body is the next `body` bytes of stdout: taken even when refused, or
        # it would be sent ahead of the response body.
        body = context.take_output(request.body) if request.body and context.take_output else b""
        # WIT field names keep their dashes in wasmtime-py's records.
        timeout_ms = getattr(request, "timeout-ms")
        outgoing = Outgoing(
            request.method,
            request.url,
            decode_headers(request.headers, _MAX_HEADERS),
            body,
            timeout_ms / 1000 if timeout_ms else None,
            bool(request.cache),
        )
        fetched = capability.fetch(context, fuel, outgoing)
        if context.put_file is None:
            raise OutboundFailure("failed", "the function's sandbox has no /.edgefn directory")
        context.put_file("fetch", fetched.body)
        return wc.Variant(
            "ok",
            _record(
                status=fetched.status,
                # An obsolete folded header value holds a line break: one line each.
                headers=encode_headers([(k, " ".join(v.splitlines())) for k, v in fetched.headers]),
                body=len(fetched.body),
                url=fetched.url,
            ),
        )
    except OutboundFailure as failure:
        return wc.Variant("err", _record(kind=failure.kind, message=failure.message))
    except Exception as exc:  # noqa: BLE001 - see above; the host's own bug, said plainly
        log.exception("outbound fetch failed in the host")
        return wc.Variant(
            "err", _record(kind="failed", message=f"the host failed: {type(exc).__name__}")
        )


def _record(**fields: Any) -> wc.Record:
    record = wc.Record()
    record.__dict__.update(fields)
    return record
