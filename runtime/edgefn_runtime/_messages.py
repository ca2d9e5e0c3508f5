"""The data that goes into a sandbox and comes out of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "LOOP_TOKEN",
    "MAX_LOOPS",
    "WARM_UP_HEADER",
    "Outcome",
    "Request",
    "RequestSource",
    "Response",
    "ResponseSink",
    "Usage",
]

HeaderList = list[tuple[str, str]]

# Marks the throwaway request a gateway runs before a version takes traffic:
# capabilities with effects outside the sandbox (outbound HTTP) refuse it.
WARM_UP_HEADER = "x-edgefn-warmup"
# RFC 8586 `CDN-Loop`: outbound requests carry the incoming request's value with
# this token added, and a gateway refuses a request that has passed through
# edgefn this many times (a function fetching itself, or two fetching each other).
LOOP_TOKEN = "edgefn"
MAX_LOOPS = 8


@dataclass
class Request:
    """One HTTP request, with `path` relative to the function's route."""

    method: str
    path: str = "/"
    query: str = ""
    headers: HeaderList = field(default_factory=list)
    body: bytes = b""


@dataclass
class Response:
    status: int
    headers: HeaderList
    body: bytes


class RequestSource(Protocol):
    """A request body the function reads as the client sends it (the client's
    connection), given to `Sandbox.invoke`. Called on the sandbox's thread."""

    def read(self, size: int, timeout: float) -> bytes:
        """At most `size` more bytes of the body, waiting at most `timeout` seconds
        for them; b"" at its end. Raises `TimeoutError` when out of time, and
        `ConnectionError` when the client left."""


class ResponseSink(Protocol):
    """Where a response the function streams goes as it is produced (the client's
    connection), given to `Sandbox.invoke`. Called on the sandbox's thread."""

    def start(self, status: int, headers: HeaderList) -> bool:
        """Send the head: the function began its body (checked, as a whole
        response's head is). False to take it whole instead (an edge cache that
        stores it): the body is then gathered, and the outcome carries it."""

    def write(self, chunk: bytes, timeout: float) -> bool:
        """Send the body's next chunk, waiting at most `timeout` seconds for room;
        False if nobody reads any more. Raises `TimeoutError` when out of time."""


@dataclass
class Usage:
    """What one request consumed.

    No peak memory: wasmtime's C API gives the host no handle on a component's
    linear memory and no way to read a store's high-water mark; the memory
    limit is enforced all the same (`Limits.memory`).
    """

    fuel: int = 0
    image_pixels: int = 0
    # Outbound HTTP: responses received (redirect hops included) and fetches
    # failed, response body bytes received, seconds spent fetching, and those
    # outcomes by status class ("2xx".."5xx") or failure kind ("not_allowed",
    # "timeout", "too_large", "failed"), or "cached"/"stale" (the origin cache).
    fetches: int = 0
    fetch_bytes: int = 0
    fetch_seconds: float = 0.0
    fetch_outcomes: dict[str, int] = field(default_factory=dict)
    # The origin cache: fetches it answered without asking the origin (also the
    # outcome "cached"), with its stored body after the origin's 304, and stale
    # because the origin failed (stale-if-error; the outcome "stale" when the
    # fetch failed, its "5xx" when the origin answered one). `fetch_bytes`
    # counts only what origins sent; the byte caps count cached bodies too.
    fetch_cache_hits: int = 0
    fetch_cache_revalidated: int = 0
    fetch_cache_stale: int = 0
    # Key-value stores: operations made, seconds spent in them, and how each
    # ended by (operation, result): result "ok", "miss" (get of an absent key)
    # or a failure kind ("not_declared", "too_large", "quota_exceeded", ...).
    kv_ops: int = 0
    kv_seconds: float = 0.0
    kv_outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    instantiate_seconds: float = 0.0
    execute_seconds: float = 0.0


@dataclass
class Outcome:
    """A successful invocation: the response, what it cost, and what it logged."""

    response: Response
    usage: Usage
    logs: list[str]
