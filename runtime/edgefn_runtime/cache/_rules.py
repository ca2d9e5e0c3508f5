"""HTTP's rules for a shared cache (RFC 9111), decided once per response.

What may be stored, and for how long, is hishel's (`CacheMiss.next` with
`shared=True`: method, status, `no-store`, `private`, `Authorization` on the
request, explicit freshness; its `Cache-Control` parser and freshness
lifetime). Serving is written here instead: hishel's lookup (`IdleClient.next`)
re-parses the stored headers on every request, 80 µs a hit on this machine
against the hit path's whole budget of ~90 µs, and hishel 2.0 has no
stale-while-revalidate, stale-if-error or answers to conditional requests. So
`decide()` turns a response into numbers when it is stored, and a hit only
compares them.

Stricter than RFC 9111 in four ways, as CDNs in front of applications are: a
response is stored only with an explicit lifetime (`s-maxage`, `max-age`,
`Expires`) or `no-cache` with a validator, never on a heuristic; never with
`Set-Cookie` (one client's session must not reach another); never with
`Vary: *`; never a 5xx (a failure is what stale-if-error serves the last good
copy for, not something to keep).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from hishel import CacheOptions, Headers, StoreAndUse
from hishel import Request as HishelRequest
from hishel import Response as HishelResponse
from hishel._core._headers import parse_cache_control
from hishel._core._spec import CacheMiss, get_freshness_lifetime

from edgefn_contract.image import NEGOTIATED_HEADER

__all__ = ["Freshness", "decide", "freshened", "not_modified", "not_modified_headers", "validators"]

_SHARED = CacheOptions(shared=True, supported_methods=["GET", "HEAD"])
# Headers that describe one exchange, not the stored response (RFC 9111 3.1
# names the hop-by-hop ones; the rest are the gateway's own, added per request).
PER_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "x-request-id",
        "server-timing",
        "x-edgefn-usage",
        "x-edgefn-cache",
        "age",
        "date",
        NEGOTIATED_HEADER,
    }
)
# What a 304 carries of the stored response (RFC 9110 15.4.5).
_NOT_MODIFIED_HEADERS = frozenset(
    {"cache-control", "content-location", "etag", "expires", "last-modified", "vary"}
)

Headers_ = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Freshness:
    """What `decide()` found: the headers to store and the response's lifetimes."""

    headers: tuple[tuple[str, str], ...]
    # Seconds from now: fresh for `lifetime` (0: revalidate every time), then
    # servable stale while revalidating / on error for these many more.
    lifetime: float
    stale_while_revalidate: float
    stale_if_error: float
    initial_age: float
    etag: str | None
    last_modified: str | None
    vary: tuple[str, ...]


def decide(
    method: str, request_headers: Headers_, status: int, response_headers: Headers_
) -> Freshness | None:
    """The response's freshness if a shared cache may store it; None if not."""
    if status >= 500:
        return None  # a failure: stale-if-error serves the last good copy instead
    grouped = _group(response_headers)
    if "set-cookie" in grouped or ("cache-control" not in grouped and "expires" not in grouped):
        # The second: no lifetime, no `no-cache`: nothing to store, said without
        # hishel (~100 µs), for every response of a function that never caches.
        return None
    vary = tuple(
        dict.fromkeys(
            name.strip().lower()
            for value in grouped.get("vary", ())
            for name in value.split(",")
            if name.strip()
        )
    )
    if "*" in vary:
        return None
    response = HishelResponse(status, Headers(grouped))
    request = HishelRequest(method.upper(), "", Headers(_group(request_headers)))
    state = CacheMiss(request=request, options=_SHARED).next(response)
    if not isinstance(state, StoreAndUse):
        return None
    directives = parse_cache_control(grouped.get("cache-control", [""])[0])
    etag = _first(grouped, "etag")
    last_modified = _first(grouped, "last-modified")
    explicit = (
        directives.s_maxage is not None or directives.max_age is not None or "expires" in grouped
    )
    if directives.no_cache is True:
        if etag is None and last_modified is None:
            return None  # could never be revalidated: storing it would only cost
        lifetime = 0.0
    elif not explicit:
        return None
    else:
        lifetime = float(max(0, get_freshness_lifetime(response, is_cache_shared=True) or 0))
        if lifetime == 0 and etag is None and last_modified is None:
            return None
    # must-revalidate, proxy-revalidate and s-maxage forbid serving it stale
    # (RFC 9111 5.2.2.2, 5.2.2.8, 5.2.2.10), even when the function fails.
    strict = (
        directives.must_revalidate
        or directives.proxy_revalidate
        or directives.s_maxage is not None
        or directives.no_cache is True
    )
    kept = tuple(
        (name, value)
        for name, values in _group_ordered(state.response.headers)
        if name not in PER_REQUEST
        for value in values
    )
    return Freshness(
        headers=kept,
        lifetime=lifetime,
        stale_while_revalidate=0.0 if strict else float(directives.stale_while_revalidate or 0),
        stale_if_error=0.0 if strict else float(directives.stale_if_error or 0),
        initial_age=_age(grouped),
        etag=etag,
        last_modified=last_modified,
        vary=vary,
    )


def freshened(stored: Headers_, not_modified_headers: Headers_) -> list[tuple[str, str]]:
    """The stored headers updated with a 304's (RFC 9111 4.3.4): each field the
    304 carries replaces the stored one, except those about the body."""
    fresh = _group(not_modified_headers)
    for name in ("content-length", "content-type", "content-encoding", "content-range"):
        fresh.pop(name, None)
    kept = [(n, v) for n, v in stored if n.lower() not in fresh]
    return kept + [(name, value) for name, values in fresh.items() for value in values]


def not_modified(request_headers: Headers_, etag: str | None, last_modified: str | None) -> bool:
    """Whether a GET or HEAD with these headers is answered 304 (RFC 9110 13.1.2,
    13.1.3; If-None-Match wins over If-Modified-Since)."""
    none_match = [v for n, v in request_headers if n.lower() == "if-none-match"]
    if none_match:
        if etag is None:
            return False
        tags = [t.strip() for value in none_match for t in value.split(",")]
        return "*" in tags or _weak(etag) in {_weak(t) for t in tags}
    since = next((v for n, v in request_headers if n.lower() == "if-modified-since"), None)
    if since is None or last_modified is None:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False  # an unparsable date is ignored (RFC 9110 13.1.3)


def not_modified_headers(stored: Headers_) -> list[tuple[str, str]]:
    """The stored headers a 304 repeats."""
    return [(n, v) for n, v in stored if n.lower() in _NOT_MODIFIED_HEADERS]


def validators(etag: str | None, last_modified: str | None) -> list[tuple[str, str]]:
    """The conditional headers that ask whether a stored response is still current."""
    found = []
    if etag is not None:
        found.append(("if-none-match", etag))
    if last_modified is not None:
        found.append(("if-modified-since", last_modified))
    return found


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def _age(grouped: dict[str, list[str]]) -> float:
    value = _first(grouped, "age")
    # isascii: "²".isdigit() is true, and float() refuses it.
    return float(value) if value is not None and value.isascii() and value.isdigit() else 0.0


def _first(grouped: dict[str, list[str]], name: str) -> str | None:
    values = grouped.get(name)
    return values[0] if values else None


def _group(headers: Headers_) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.lower(), []).append(value)
    if "cache-control" in grouped:  # several lines are one list (RFC 9110 5.3)
        grouped["cache-control"] = [", ".join(grouped["cache-control"])]
    return grouped


def _group_ordered(headers: Headers) -> list[tuple[str, list[str]]]:
    return [(name, headers.get_list(name) or []) for name in headers]
