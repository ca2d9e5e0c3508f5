"""The origin cache: what functions fetch, kept by the origin's own `Cache-Control`.

Twenty variants of one original fetch it once: a GET a function sends with
`cache` on (`edgefn.fetch`'s default, always for `Image.from_url`) is looked up
in the node's `HttpCache` under the fetching function's own namespace
(`key("origin", function, URL)`), so no function ever reads what another
fetched, even from the same URL. HTTP's rules for a shared cache decide what
is kept (`cache._rules.decide`: never `private`, `no-store`, `Set-Cookie`,
`Authorization` without `public`, nor anything without an explicit lifetime);
a stale copy with validators is revalidated with a conditional request, and a
304 serves the stored body.

Not cached: other methods, fetches with conditional or range headers of the
function's own (it asked the origin a question the cache does not answer),
fetches whose request says `Cache-Control: no-cache`/`no-store` (never served
from the cache; stored if the answer allows), and fetches that were redirected
(what the function asked for and what answered are different URLs, and a hop's
own `Cache-Control` is not read: simpler to keep none of it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ...cache import Entry, HttpCache
from ...cache._keep import find, keep
from ...cache._keys import key
from ...cache._rules import freshened, validators
from ._policy import Target

__all__ = ["CACHE_BYPASS_HEADERS", "Found", "OriginCache"]

Headers = Sequence[tuple[str, str]]

# The function asks the origin something a stored copy does not answer; or it
# sends a user's cookies, whose answer an origin may well not mark `private`.
CACHE_BYPASS_HEADERS = frozenset(
    {
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
        "cookie",
    }
)
_NO_LOOKUP = ("no-cache", "no-store", "max-age=0")


@dataclass(frozen=True, slots=True)
class Found:
    """What the cache holds for one fetch: its base key, and the entry if any."""

    key: str
    entry: Entry | None
    lookup: bool  # False: the function's request forbids answering from the cache

    def fresh(self, now: float) -> bool:
        return self.lookup and self.entry is not None and now < self.entry.fresh_until

    def conditional(self) -> list[tuple[str, str]]:
        """The headers that revalidate a stale entry; none when there is none."""
        if not self.lookup or self.entry is None:
            return []
        return validators(self.entry.etag, self.entry.last_modified)

    def usable_on_error(self, now: float) -> bool:
        """Whether the stale copy may stand in for a failed fetch (stale-if-error)."""
        entry = self.entry
        return self.lookup and entry is not None and now < entry.fresh_until + entry.stale_if_error


class OriginCache:
    """The outbound capability's view of the node's `HttpCache`; thread-safe."""

    def __init__(self, cache: HttpCache) -> None:
        self.cache = cache
        # Wall-clock seconds, as `Entry` keeps them (tests move it forward).
        self.clock: Callable[[], float] = time.time
        self._flights = _Flights()

    def find(self, function: str, target: Target, headers: Headers) -> Found | None:
        """The cache's answer for a GET of `target` with the function's `headers`;
        None when the fetch bypasses the cache altogether."""
        lookup = True
        for name, value in headers:
            lower = name.lower()
            if lower in CACHE_BYPASS_HEADERS:
                return None
            if lower in ("cache-control", "pragma") and any(d in value.lower() for d in _NO_LOOKUP):
                lookup = False
        base = _base_key(function, target)
        if not lookup:
            return Found(base, None, lookup=False)
        return Found(base, find(self.cache, base, headers), lookup=True)

    @contextlib.contextmanager
    def coalesced(self, found: Found, deadline: float) -> Iterator[bool]:
        """Coalesce concurrent misses of one key in this worker: the first fetches,
        the others wait for it (until `deadline`, on `time.monotonic()`); yields
        True to those, which look again, then fetch themselves if it left
        nothing (in parallel: an origin whose answers are not kept is not asked
        one fetch at a time)."""
        if not found.lookup:
            yield False
            return
        with self._flights.joined(found.key, deadline) as led:
            yield not led

    def store(
        self,
        found: Found,
        function: str,
        request_headers: Headers,
        status: int,
        headers: Headers,
        body: bytes,
    ) -> bool:
        """Keep the answer if a shared cache may (and it is within `max_object`);
        whether it was kept."""
        # A purge of the whole function (prefix "/") drops its originals too; a
        # purge of some of its paths does not.
        entry = keep(
            self.cache,
            found.key,
            request_headers,
            status,
            headers,
            body,
            self.clock(),
            function=function,
            path="/",
        )
        return entry is not None

    def revalidated(
        self,
        found: Found,
        function: str,
        request_headers: Headers,
        not_modified: Headers,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The stored response, its headers updated by the origin's 304 (RFC 9111
        4.3.4), stored again if it still may be: (status, headers, body)."""
        entry = found.entry
        assert entry is not None, "only a stored entry is revalidated"
        headers = freshened(entry.headers, not_modified)
        if not self.store(found, function, request_headers, entry.status, headers, entry.body):
            self.cache.delete(found.key)  # the 304 says it may not be kept any more
        return entry.status, headers, entry.body


def served_headers(entry_headers: Headers, body: bytes, age: int) -> list[tuple[str, str]]:
    """A stored response's headers as a fetch answers them: with its `Age`
    (RFC 9111 5.1) and the body's length, which the store leaves out."""
    return [*entry_headers, ("Content-Length", str(len(body))), ("Age", str(age))]


def _base_key(function: str, target: Target) -> str:
    # The URL as the origin gets it, not normalised: an origin may read its
    # query's order, `+` or an empty value differently from another spelling.
    return key("origin", function, target.origin + target.target)


class _Flights:
    """Fetches under way in this worker, by key: the first fetches, the rest wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, threading.Event] = {}

    @contextlib.contextmanager
    def joined(self, key: str, deadline: float) -> Iterator[bool]:
        """Yields True to the one fetching, False to the others after it is done
        (or `deadline` passed)."""
        with self._lock:
            done = self._flights.get(key)
            if done is None:
                done = self._flights[key] = threading.Event()
                leader = True
            else:
                leader = False
        if not leader:
            done.wait(max(0.0, deadline - time.monotonic()))
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                del self._flights[key]
            done.set()
