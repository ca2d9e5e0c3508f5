"""The one place that turns edgefn errors into HTTP statuses and JSON error bodies."""

from __future__ import annotations

from starlette.responses import JSONResponse

from edgefn_runtime import (
    BodyTooLarge,
    FuelExhausted,
    GuestCrashed,
    GuestError,
    InvalidComponent,
    InvalidResponse,
    MemoryLimitExceeded,
    ResponseTooLarge,
    SandboxError,
    Timeout,
)

from ..manifest import ManifestError
from ..registry import (
    FunctionNotFound,
    RegistryError,
    RegistryUnavailable,
    RouteConflict,
    StorageFull,
    VersionNotFound,
)
from ._deploy import InvalidAssets

__all__ = ["HANDLED", "GatewayError", "error_response", "status_and_code"]


class GatewayError(Exception):
    """An HTTP error raised by the gateway itself (no route, overloaded, bad upload)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# Exception type -> HTTP status. The `code` comes from the exception.
_SANDBOX_STATUS: dict[type[SandboxError], int] = {
    BodyTooLarge: 413,
    GuestError: 500,
    GuestCrashed: 502,
    InvalidResponse: 502,
    ResponseTooLarge: 502,
    Timeout: 504,
    FuelExhausted: 503,
    MemoryLimitExceeded: 503,
}

_REGISTRY_STATUS: dict[type[Exception], tuple[int, str]] = {
    FunctionNotFound: (404, "function_not_found"),
    VersionNotFound: (404, "version_not_found"),
    RouteConflict: (409, "route_conflict"),
    RegistryUnavailable: (503, "registry_unavailable"),
    ManifestError: (400, "invalid_manifest"),
    InvalidComponent: (400, "invalid_component"),
    InvalidAssets: (400, "invalid_assets"),
    StorageFull: (507, "insufficient_storage"),
}


# Every exception type `status_and_code` knows.
HANDLED: tuple[type[Exception], ...] = (
    GatewayError,
    SandboxError,
    RegistryError,
    *_REGISTRY_STATUS,
)


def status_and_code(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, GatewayError):
        return exc.status, exc.code
    if isinstance(exc, SandboxError):
        return _SANDBOX_STATUS.get(type(exc), 502), exc.code
    for kind, status_code in _REGISTRY_STATUS.items():
        if isinstance(exc, kind):
            return status_code
    if isinstance(exc, RegistryError):
        return exc.status, exc.code  # 400 `registry_error` but where a subclass says
    raise TypeError(f"no HTTP mapping for {type(exc).__name__}")


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    """`{"error": {"code", "message", "request_id"}}` with the status for `exc`."""
    status, code = status_and_code(exc)
    headers = {"x-request-id": request_id}
    if isinstance(exc, GatewayError):
        headers.update(exc.headers)
    body = {"error": {"code": code, "message": str(exc), "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)
