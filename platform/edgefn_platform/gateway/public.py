"""The public listener: function traffic only, routed by longest prefix."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgefn_runtime import BodyTooLarge, GuestCrashed, Outcome, SandboxError
from edgefn_runtime import Request as SandboxRequest

from ._errors import GatewayError, error_response
from ._functions import FunctionTable, LiveFunction
from ._logs import LogSink

__all__ = ["ROUTE_HEADER", "create_public_app"]

# Tells the function which route prefix it was reached under.
ROUTE_HEADER = "x-edgefn-route"
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
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
}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\0]")


def create_public_app(table: FunctionTable, logs: LogSink, max_in_flight: int = 64) -> Starlette:
    """A Starlette app that runs each request in its function's sandbox.

    Sandbox calls run in worker threads, off the event loop; beyond
    `max_in_flight` concurrent calls the gateway answers 503 `overloaded`.
    """
    limiter = anyio.CapacityLimiter(max_in_flight)

    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        function: LiveFunction | None = None
        try:
            match = table.match(request.url.path)
            if match is None:
                raise GatewayError(
                    404, "no_route", f"no function is deployed at {request.url.path}"
                )
            function, path = match
            if limiter.borrowed_tokens >= limiter.total_tokens:
                raise GatewayError(
                    503,
                    "overloaded",
                    "the gateway is at capacity; retry shortly",
                    {"retry-after": "1"},
                )
            body = await _read_body(request, function.limits.max_body)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
            headers.append((ROUTE_HEADER, function.route))
            call = SandboxRequest(request.method, path, request.url.query, headers, body)
            outcome = await anyio.to_thread.run_sync(
                function.sandbox.invoke, call, function.limits, limiter=limiter
            )
            response = _to_http(outcome, request_id)
        except (GatewayError, SandboxError) as exc:
            response = error_response(exc, request_id)
            if function is not None:
                logs.add(function.name, request_id, "log", getattr(exc, "logs", []))
        if function is not None:
            _log_access(logs, function, request, response, request_id, started)
        return response

    return Starlette(routes=[Route("/{path:path}", handle, methods=_METHODS)])


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _to_http(outcome: Outcome, request_id: str) -> Response:
    headers = []
    for name, value in outcome.response.headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            error = GuestCrashed(f"the function answered with an invalid header {name!r}")
            error.logs = outcome.logs
            raise error
        if name.lower() not in _HOP_BY_HOP:
            headers.append((name.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    response = Response(outcome.response.body, status_code=outcome.response.status)
    response.raw_headers = [
        *(h for h in response.raw_headers if h[0] == b"content-length"),
        *headers,
        (b"x-request-id", request_id.encode("latin-1", "replace")),
    ]
    response.outcome = outcome  # type: ignore[attr-defined]
    return response


def _log_access(
    logs: LogSink,
    function: LiveFunction,
    request: Request,
    response: Response,
    request_id: str,
    started: float,
) -> None:
    outcome: Outcome | None = getattr(response, "outcome", None)
    if outcome is not None:
        logs.add(function.name, request_id, "log", outcome.logs)
    entry = {
        "method": request.method,
        "path": request.url.path,
        "status": response.status_code,
        "version": function.version,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "fuel": outcome.usage.fuel if outcome else None,
        "worker": os.getpid(),
    }
    logs.add(function.name, request_id, "access", [json.dumps(entry)])
