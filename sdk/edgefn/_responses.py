"""Responses a handler returns, and the shortcuts that build them."""

from __future__ import annotations

import json as _json
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

from ._datastructures import MutableHeaders

__all__ = ["JSONResponse", "Response", "StreamingResponse", "json", "redirect", "text"]


class Response:
    """An HTTP response. A `str` body is encoded as UTF-8."""

    media_type: str | None = None

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        # 1xx are the server's to send: the gateway answers 502 for them.
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"response status must be an int from 200 to 599, got {status!r}")
        self.status = status
        self.body = self._render(body)
        self.headers = MutableHeaders(headers.items() if headers else ())
        media_type = media_type or self.media_type
        if media_type is not None and "content-type" not in self.headers:
            if media_type.startswith("text/") and "charset=" not in media_type:
                media_type += "; charset=utf-8"
            self.headers.append("content-type", media_type)

    def _render(self, body: Any) -> bytes:
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode()
        if isinstance(body, (bytearray, memoryview)):
            return bytes(body)
        raise TypeError(
            f"{type(self).__name__} body must be bytes or str, got {type(body).__name__}"
        )

    def chunks(self) -> Iterator[bytes]:
        """The body as it is sent: one chunk here, many for a `StreamingResponse`."""
        yield self.body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, {len(self.body)} bytes)"


class StreamingResponse(Response):
    """A response whose body is produced chunk by chunk and sent as it is: the
    client gets the first chunk before the last is produced, and a large body
    never has to fit in the function's memory at once. The status and headers
    go with the first chunk; an error after it cuts the response short.

    >>> StreamingResponse(f"line {i}\\n" for i in range(1_000_000))
    """

    def __init__(
        self,
        content: Iterable[bytes | str],
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(b"", status, headers, media_type)
        self.body_iterator: Generator[bytes] = self._rendered(iter(content))

    def _rendered(self, content: Iterator[bytes | str]) -> Generator[bytes]:
        try:
            for chunk in content:
                yield self._render(chunk)
        finally:
            # Closed with this generator, not when the garbage collector gets to
            # it: a generator's `finally` runs, and what it raises is the function's.
            close = getattr(content, "close", None)
            if close is not None:
                close()

    def chunks(self) -> Iterator[bytes]:
        return self.body_iterator


class JSONResponse(Response):
    """A response whose body is `content` serialised as compact UTF-8 JSON."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, status, headers)

    def _render(self, content: Any) -> bytes:
        return _json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def json(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Answer with `content` as JSON."""
    return JSONResponse(content, status, headers)


def text(content: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Answer with plain UTF-8 text."""
    return Response(content, status, headers, media_type="text/plain")


def redirect(url: str, status: int = 307, headers: Mapping[str, str] | None = None) -> Response:
    """Redirect to `url` (307 keeps the method and body; use 301/302/303/308 as needed)."""
    if status not in (301, 302, 303, 307, 308):
        raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, got {status}")
    return Response(b"", status, {**(headers or {}), "location": url})
