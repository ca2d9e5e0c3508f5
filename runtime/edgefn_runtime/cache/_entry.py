"""One stored response, with what the cache decided about it when it was stored."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Entry"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored response. Times are wall-clock seconds (`time.time()`): entries
    outlive the worker that stored them (disk tier), so no monotonic clock.

    Freshness is decided once, when the response is stored (`_rules.py`), so a
    hit compares numbers and parses no header."""

    status: int
    # As the response had them, minus hop-by-hop and per-request headers.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    # Served without asking the function (or the origin) until then.
    fresh_until: float
    # After `fresh_until`: seconds a stale copy may still be served while it is
    # refreshed in the background (RFC 5861 stale-while-revalidate) ...
    stale_while_revalidate: float = 0.0
    # ... and seconds it may be served when refreshing it fails (stale-if-error).
    stale_if_error: float = 0.0
    # The response's own `Age` when it was stored (an origin's cache may have aged it).
    initial_age: float = 0.0
    # Validators for conditional requests, from the response's headers.
    etag: str | None = None
    last_modified: str | None = None
    # Purges select entries by these: the function that owns the entry and the
    # path (relative to the function's route) it was stored for.
    function: str = ""
    path: str = ""
    # Not empty: this entry only names the request headers the response varies
    # on (`Vary`); the response itself is stored under a key including their values.
    vary: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """What the entry counts against the cache's bounds."""
        return len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers) + 256

    def age(self, now: float) -> int:
        """The `Age` to send with it (RFC 9111 4.2.3), in whole seconds."""
        return max(0, int(self.initial_age + now - self.stored_at))
