"""`App`: route table and dispatch from a `Request` to a `Response`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._exceptions import HTTPError
from ._requests import Request
from ._responses import JSONResponse, Response

__all__ = ["App", "Handler"]

Handler = Callable[[Request], Any]
_H = TypeVar("_H", bound=Handler)

# Converter name -> (regex, Python type).
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"[0-9]+", int),
    "path": (r".*", str),
}
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?}")


@dataclass(frozen=True)
class _Route:
    path: str
    methods: frozenset[str]
    handler: Handler
    pattern: re.Pattern[str]
    converters: dict[str, Callable[[str], Any]]

    def match(self, path: str) -> dict[str, Any] | None:
        if not self.converters:
            return {} if path == self.path else None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: self.converters[name](value) for name, value in found.groupdict().items()}


def _compile(path: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    if not path.startswith("/"):
        raise ValueError(f"route {path!r} must start with '/'")
    regex, converters, end = "", {}, 0
    for param in _PARAM.finditer(path):
        name, kind = param.group(1), param.group(2) or "str"
        if kind not in _CONVERTERS:
            allowed = ", ".join(_CONVERTERS)
            raise ValueError(f"route {path!r}: unknown converter {kind!r} (allowed: {allowed})")
        if name in converters:
            raise ValueError(f"route {path!r}: parameter {name!r} appears twice")
        pattern, converters[name] = _CONVERTERS[kind]
        regex += re.escape(path[end : param.start()]) + f"(?P<{name}>{pattern})"
        end = param.end()
    regex += re.escape(path[end:])
    return re.compile(regex), converters


class App:
    """A function's HTTP routes.

    >>> app = App()
    >>> @app.get("/items/{id:int}")
    ... def item(request):
    ...     return {"id": request.path_params["id"]}

    A handler returns a `Response`, a `dict`/`list` (sent as JSON), a `str`
    (text/plain) or `bytes` (application/octet-stream). Unknown paths answer
    404; known paths with another method answer 405 with `Allow`.
    """

    def __init__(self) -> None:
        self.routes: list[_Route] = []

    def route(self, path: str, methods: Iterable[str] = ("GET",)) -> Callable[[_H], _H]:
        """Register the decorated function for `path` and `methods`."""
        wanted = frozenset(m.upper() for m in methods)
        if not wanted:
            raise ValueError(f"route {path!r} needs at least one method")
        if "GET" in wanted:
            wanted |= {"HEAD"}
        pattern, converters = _compile(path)

        def decorator(handler: _H) -> _H:
            self.routes.append(_Route(path, wanted, handler, pattern, converters))
            return handler

        return decorator

    def get(self, path: str) -> Callable[[_H], _H]:
        return self.route(path, ["GET"])

    def post(self, path: str) -> Callable[[_H], _H]:
        return self.route(path, ["POST"])

    def put(self, path: str) -> Callable[[_H], _H]:
        return self.route(path, ["PUT"])

    def patch(self, path: str) -> Callable[[_H], _H]:
        return self.route(path, ["PATCH"])

    def delete(self, path: str) -> Callable[[_H], _H]:
        return self.route(path, ["DELETE"])

    def handle(self, request: Request) -> Response:
        """Dispatch `request` to its handler.

        `HTTPError` becomes its JSON error response; any other exception
        propagates to the caller (the sandbox reports it as a function error).
        """
        try:
            return _to_response(self._dispatch(request))
        except HTTPError as exc:
            return error_response(exc)

    def _dispatch(self, request: Request) -> Any:
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match(request.path)
            if params is None:
                continue
            if request.method in route.methods:
                request.path_params = params
                return route.handler(request)
            allowed |= route.methods
        if allowed:
            raise HTTPError(
                405,
                f"method {request.method} is not allowed for {request.path}",
                headers={"allow": ", ".join(sorted(allowed))},
            )
        raise HTTPError(404, f"no route matches {request.path}")


def error_response(exc: HTTPError) -> Response:
    """The JSON body for an `HTTPError`: `{"error": {"code", "message"}}`."""
    body = {"error": {"code": exc.code, "message": exc.message}}
    return JSONResponse(body, exc.status, exc.headers)


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, (dict, list)):
        return JSONResponse(result)
    if isinstance(result, str):
        return Response(result, media_type="text/plain")
    if isinstance(result, (bytes, bytearray, memoryview)):
        return Response(bytes(result), media_type="application/octet-stream")
    if result is None:
        return Response(b"", 204)
    raise TypeError(
        f"handler returned {type(result).__name__}; return a Response, dict, list, str or bytes"
    )
