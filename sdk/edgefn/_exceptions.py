"""Exceptions a handler raises to answer with an HTTP error."""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus

__all__ = ["HTTPError"]

# Phrases Python renamed in 3.13 (RFC 9110); pinned so codes match natively and in wasm.
_CODES = {
    413: "content_too_large",
    414: "uri_too_long",
    416: "range_not_satisfiable",
    422: "unprocessable_content",
}


class HTTPError(Exception):
    """Abort the request and answer `status` with a JSON error body.

    >>> raise HTTPError(404, "no such item: 42")

    The body is `{"error": {"code": "not_found", "message": "no such item: 42"}}`;
    the code is derived from the status unless given.
    """

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be 400-599, got {status}")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        self.status = status
        self.message = message if message is not None else phrase
        self.code = (
            code
            or _CODES.get(status)
            or re.sub(r"[^a-z0-9]+", "_", phrase.lower().replace("'", ""))
        )
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"HTTPError({self.status}, {self.message!r})"
