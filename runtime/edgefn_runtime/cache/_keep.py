"""Keeping a response and finding it again: the two steps both caches share
(the gateway's responses, the functions' fetched originals)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ._entry import Entry
from ._keys import variant_key
from ._rules import decide
from ._store import HttpCache

__all__ = ["find", "keep"]

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
) -> Entry | None:
    """Store a GET's response under `base` if a shared cache may (`decide`), as
    of `now`; the entry, or None when it was not kept.

    A response with `Vary` is kept in two steps (`Entry.vary`): under `base`, a
    pointer naming the headers it varies on; under a key with their values, the
    response. `negotiated`: `Accept` on an image counts only through the format
    `edgefn.image.negotiate` picks (the gateway's functions negotiate that way;
    an origin may not)."""
    freshness = decide("GET", request_headers, status, headers)
    if freshness is None:
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
        pointer = replace(entry, body=b"", vary=freshness.vary)
        where = _variant(base, pointer, request_headers, negotiated)
        if not cache.put(base, pointer):
            return None
    return entry if cache.put(where, entry) else None


def find(
    cache: HttpCache, base: str, headers: Headers, *, negotiated: bool = False, disk: bool = True
) -> Entry | None:
    """What `keep` stored under `base` for a request with these headers (`disk`
    False: what the memory tier has of it)."""
    entry = cache.get(base, disk=disk)
    if entry is None or not entry.vary:
        return entry
    return cache.get(_variant(base, entry, headers, negotiated), disk=disk)


def _variant(base: str, pointer: Entry, headers: Headers, negotiated: bool) -> str:
    image = negotiated and any(
        n.lower() == "content-type" and v.lower().startswith("image/") for n, v in pointer.headers
    )
    return variant_key(base, pointer.vary, headers, image)
