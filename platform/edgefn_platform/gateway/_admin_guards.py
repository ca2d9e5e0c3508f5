"""What stands in front of the admin API: the token check and the upload limit,
as ASGI middleware so both act before routing and before any body is read."""

from __future__ import annotations

import hmac

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import GatewayError, error_response
from ._request_ids import request_id as checked_request_id
from .config import check_token

__all__ = ["LimitBody", "RequireToken"]


class RequireToken:
    """ASGI middleware: 401 for every request but the health probes without
    `Authorization: Bearer <token>`, compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        # An empty token would let `Authorization: Bearer ` in: refused outright.
        self.expected = f"bearer {check_token(token)}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _PROBES:
            given = dict(scope["headers"]).get(b"authorization", b"")
            # Only the scheme is case-insensitive; the token is compared as sent.
            given = given[:7].lower() + given[7:]
            if not given[7:].strip() or not hmac.compare_digest(given, self.expected):
                error = GatewayError(
                    401,
                    "unauthorized",
                    "missing or wrong admin token (send Authorization: Bearer <token>)",
                    {"www-authenticate": "Bearer"},
                )
                given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
                await error_response(error, checked_request_id(given))(scope, receive, send)
                return
        await self.app(scope, receive, send)


_PROBES = ("/healthz", "/readyz")


class LimitBody:
    """ASGI middleware: 413 for a request body over `limit` bytes, from its declared
    Content-Length before reading any of it, else as soon as the bytes read pass it
    (a chunked upload), so an oversized upload is never spooled to disk whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"upload exceeds the limit of {self.limit} bytes"
        # Closing makes the client stop sending the rest instead of the server reading it.
        headers = {"connection": "close"}
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            error = GatewayError(413, "upload_too_large", message, headers)
            await error_response(error, checked_request_id(None))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            received_message = await receive()
            received += len(received_message.get("body", b""))
            if received > self.limit:
                # An HTTPException, which FastAPI's body parsing lets through to
                # the app's handler (it turns any other exception into a 400).
                raise HTTPException(413, message, headers)
            return received_message

        await self.app(scope, limited, send)
