"""What the public listener sends back: a function's response as HTTP."""

from __future__ import annotations

from starlette.responses import Response

from edgefn_contract.image import NEGOTIATED_HEADER
from edgefn_runtime import Response as SandboxResponse

from ._cache import CACHE_HEADER

__all__ = ["USAGE_HEADER", "stream_head", "to_http"]

# The request's usage, when the policy's `usage_header` is on.
USAGE_HEADER = "x-edgefn-usage"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    NEGOTIATED_HEADER,  # for the edge cache only (see _cache.py)
    # The gateway's own, added by `_record` (a function's were always replaced).
    "server-timing",
    CACHE_HEADER,
    USAGE_HEADER,
}


class _Answer(Response):
    """A response whose raw headers are given whole: Starlette's own constructor
    computes headers that `to_http` then replaced, a tenth of a cache hit's time."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code, self.raw_headers, self.body = status, raw_headers, body
        self.background = None


def to_http(answer: SandboxResponse, request_id: str) -> Response:
    headers = []
    body = answer.body
    if answer.status in (204, 304):
        body = b""  # never sent (RFC 9110 15.3.5, 15.4.5): the next response's bytes
    else:
        headers.append((b"content-length", str(len(body)).encode()))
    _add_headers(headers, answer.headers, request_id)
    return _Answer(answer.status, headers, body)


def _add_headers(
    raw: list[tuple[bytes, bytes]], headers: list[tuple[str, str]], request_id: str
) -> None:
    """Append the function's headers, less hop-by-hop ones, and the request's id."""
    for name, value in headers:  # the sandbox checked each one
        if name.lower() not in _HOP_BY_HOP:
            raw.append((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    raw.append((b"x-request-id", request_id.encode("latin-1", "replace")))


def stream_head(
    request_id: str, cache: str, status: int, headers: list[tuple[str, str]], queued: float
) -> list[tuple[bytes, bytes]]:
    """A streamed response's head: without a length (the server sends it chunked),
    and timed up to the function's start, which is all that is known then."""
    raw: list[tuple[bytes, bytes]] = []
    _add_headers(raw, headers, request_id)
    raw.append((CACHE_HEADER.encode(), cache.encode()))
    timing = f"cache;desc={cache.lower()}, queue;dur={queued * 1000:.2f}"
    raw.append((b"server-timing", timing.encode()))
    return raw
