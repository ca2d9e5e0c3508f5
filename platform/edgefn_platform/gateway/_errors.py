"""The one place that turns exceptions into HTTP statuses and JSON error bodies.

Every edgefn error carries its own `status` and `code` (`EdgefnError`), so there
is no table here; anything else is a bug in the gateway: logged with its
traceback, answered as a bare 500 `internal_error` that reveals nothing of it.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from edgefn_runtime import EdgefnError

__all__ = ["GatewayError", "error_response", "overloaded"]

log = logging.getLogger("edgefn.gateway")


class GatewayError(EdgefnError):
    """An HTTP error raised by the gateway itself (no route, overloaded, bad upload)."""

    code = "gateway_error"

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


def overloaded(reason: str) -> GatewayError:
    """503 `overloaded`: the client may retry in a second (backpressure)."""
    return GatewayError(
        503, "overloaded", f"overloaded: {reason}; retry shortly", {"retry-after": "1"}
    )


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    """`{"error": {"code", "message", "request_id"}}` with the status `exc` carries."""
    if not isinstance(exc, EdgefnError):
        log.error("request %s failed in the gateway", request_id, exc_info=exc)
        exc = GatewayError(500, "internal_error", "the gateway failed on this request")
    headers = {"x-request-id": request_id}
    if isinstance(exc, GatewayError):
        headers.update(exc.headers)
    body = {"error": {"code": exc.code, "message": str(exc), "request_id": request_id}}
    return JSONResponse(body, status_code=exc.status, headers=headers)
