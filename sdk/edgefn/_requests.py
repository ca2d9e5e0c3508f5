"""The request a handler receives."""

from __future__ import annotations

import io
import json as _json
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any

from ._datastructures import Headers, QueryParams
from ._exceptions import HTTPError

__all__ = ["Request"]

_WHOLE = (bytes, bytearray, memoryview)


class Request:
    """An incoming HTTP request.

    `path` is relative to the function's route. The body is read on first
    access of `body`, `text()` or `json()`, so handlers that ignore it never pay
    for it; `stream()` gives it chunk by chunk instead. For a function whose
    manifest says `stream_request_body = true`, each chunk is read as the client
    sends it, so a large upload is never held whole (`body` still gathers it).
    """

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query_string: str = "",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | Iterator[bytes] | Callable[[], bytes | Iterator[bytes]] = b"",
        path_params: dict[str, Any] | None = None,
    ) -> None:
        self.method = method.upper()
        self.path = path
        self.query_string = query_string
        self.headers = Headers(headers)
        self.path_params: dict[str, Any] = path_params or {}
        self._body = body
        self._streamed = False

    @cached_property
    def query(self) -> QueryParams:
        """Query parameters; `request.query.getlist("tag")` for repeated keys."""
        return QueryParams.parse(self.query_string)

    @property
    def body(self) -> bytes:
        """The raw body, read once on first access."""
        body = self._source()
        if isinstance(body, _WHOLE):
            self._body = whole = bytes(body)  # once: a bytearray or view is copied
            return whole
        self._take_stream()
        # One buffer, handed over as the body: b"".join() would hold every chunk
        # and the body at once, twice the body in the function's memory.
        gathered = io.BytesIO()
        for chunk in body:
            gathered.write(chunk)
        self._body = whole = gathered.getvalue()
        return whole

    def stream(self) -> Iterator[bytes]:
        """The body's chunks as they arrive (the body whole, once read); for
        a streamed body, once: it is not kept."""
        body = self._source()
        if isinstance(body, _WHOLE):
            return iter((bytes(body),) if body else ())
        self._take_stream()
        return body

    def _source(self) -> bytes | Iterator[bytes]:
        if callable(self._body):
            self._body = self._body()
        return self._body

    def _take_stream(self) -> None:
        if self._streamed:
            raise RuntimeError(
                "the request body was already streamed: read `body` or `stream()`, once"
            )
        self._streamed = True

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with the charset of `Content-Type` (UTF-8 by default)."""
        charset = encoding or _charset(self.headers.get("content-type", "")) or "utf-8"
        try:
            return self.body.decode(charset)
        except (UnicodeDecodeError, LookupError) as exc:
            raise HTTPError(400, f"request body is not valid {charset} text: {exc}") from None

    def json(self) -> Any:
        """The body parsed as JSON; invalid JSON aborts with 400 and says where it broke."""
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path!r})"


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return None
