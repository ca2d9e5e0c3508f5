"""Keeping a response and finding it again: the two steps both caches share
(the gateway's responses, the functions' fetched originals)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from edgefn_contract.image import NEGOTIATED_HEADER

from ._entry import Entry
from ._keys import variant_key
from ._rules import Freshness, decide
from ._store import HttpCache

__all__ = ["find", "keep", "locate"]

Headers = Sequence[tuple[str, str]]


def keep(
    cache: HttpCache,
    base: str,
    request_headers: Headers,
    status: int,
    headers: Headers,
    body: bytes,
    now: float,
    *,
    function: str,
    path: str,
    negotiated: bool = False,
    freshness: Freshness | None = None,
) -> Entry | None:
    """Store a GET's response under `base` if a shared cache may (`decide`), as
    of `now`; the entry, or None when it was not kept.

    A response with `Vary` is kept in two steps (`Entry.vary`): under `base`, a
    pointer naming the headers it varies on; under a key with their values, the
    response. `negotiated`: honour the response's `NEGOTIATED_HEADER`, keying
    `Accept` by the format `edgefn.image.negotiate` picks (a function can say
    so; an origin cannot). A request that repeats a header the response varies
    on is not kept: the function may have read one line and the key all.
    `freshness`: `decide`'s answer, when the caller has it already."""
    if freshness is None:
        freshness = decide("GET", request_headers, status, headers)
    if freshness is None or _repeats(freshness.vary, request_headers):
        return None
    entry = Entry(
        status=status,
        headers=freshness.headers,
        body=body,
        stored_at=now,
        # RFC 9111 4.2: fresh while its age, which starts at the response's own
        # `Age`, is under the lifetime.
        fresh_until=now + freshness.lifetime - freshness.initial_age,
        stale_while_revalidate=freshness.stale_while_revalidate,
        stale_if_error=freshness.stale_if_error,
        initial_age=freshness.initial_age,
        etag=freshness.etag,
        last_modified=freshness.last_modified,
        function=function,
        path=path,
    )
    where = base
    if freshness.vary:
        marked = negotiated and any(n.lower() == NEGOTIATED_HEADER for n, _ in headers)
        pointer = replace(
            entry,
            body=b"",
            vary=freshness.vary,
            headers=((NEGOTIATED_HEADER, "1"),) if marked else (),
        )
        where = _variant(base, pointer, request_headers)
        if not cache.put(base, pointer):
            return None
    return entry if cache.put(where, entry) else None


def find(cache: HttpCache, base: str, headers: Headers, *, disk: bool = True) -> Entry | None:
    """What `keep` stored under `base` for a request with these headers (`disk`
    False: what the memory tier has of it)."""
    return locate(cache, base, headers, disk=disk)[0]


def locate(
    cache: HttpCache, base: str, headers: Headers, *, disk: bool = True
) -> tuple[Entry | None, str]:
    """`find`'s entry, and the key the request's response is kept under: the
    variant's when the pointer is known, else `base`."""
    entry = cache.get(base, disk=disk)
    if entry is None or not entry.vary:
        return entry, base
    if _repeats(entry.vary, headers):
        return None, base
    where = _variant(base, entry, headers)
    return cache.get(where, disk=disk), where


def _variant(base: str, pointer: Entry, headers: Headers) -> str:
    return variant_key(base, pointer.vary, headers, negotiated=bool(pointer.headers))


def _repeats(vary: Sequence[str], headers: Headers) -> bool:
    if not vary:
        return False
    seen = [n.lower() for n, _ in headers if n.lower() in vary]
    return len(seen) != len(set(seen))
