"""Exceptions a handler raises to answer with an HTTP error."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

__all__ = ["HTTPError"]


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
        self.code = code or phrase.lower().replace(" ", "_").replace("-", "_")
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"HTTPError({self.status}, {self.message!r})"
