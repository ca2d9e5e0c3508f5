"""Run an `App` natively, in-process, without WebAssembly.

>>> from edgefn.testing import TestClient
>>> client = TestClient(app)
>>> response = client.get("/items/42?verbose=1")
>>> assert response.status == 200 and response.json() == {"id": 42}
"""

from __future__ import annotations

import hashlib
import importlib.util
import json as _json
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import image
from ._datastructures import Headers
from ._requests import Request
from ._responses import Response
from ._routing import App

__all__ = ["TestClient", "TestResponse", "load_app"]


@dataclass
class TestResponse:
    """What the client would receive: status, headers and body bytes."""

    __test__ = False  # not a pytest test class

    status: int
    headers: Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return _json.loads(self.body)


class TestClient:
    """Calls an `App`'s handlers directly, the way the sandbox would.

    With `raise_exceptions=True` (the default) an unhandled exception in a
    handler propagates into the test; with `False` it becomes a 500, as it
    does behind the gateway.
    """

    __test__ = False

    def __init__(
        self, app: App, *, raise_exceptions: bool = True, assets: str | Path | None = None
    ) -> None:
        self.app = app
        self.raise_exceptions = raise_exceptions
        self.assets = Path(assets) if assets is not None else None

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str = b"",
        json: Any = None,
    ) -> TestResponse:
        path, _, query = path.partition("?")
        header_items = list((headers or {}).items())
        if json is not None:
            body = _json.dumps(json)
            header_items.append(("content-type", "application/json"))
        if isinstance(body, str):
            body = body.encode()
        request = Request(method, path, query_string=query, headers=header_items, body=body)
        image.use_backend(_NativeImages(body, self.assets))
        try:
            response = self.app.handle(request)
        except Exception as exc:
            if self.raise_exceptions:
                raise
            message = f"{type(exc).__name__}: {exc}"
            error = {"error": {"code": "function_error", "message": message}}
            return TestResponse(
                500, Headers([("content-type", "application/json")]), _json.dumps(error).encode()
            )
        body = b"".join(response.chunks())
        return TestResponse(response.status, Headers(response.headers.multi_items()), body)

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("DELETE", path, **kwargs)


def load_app(directory: str | Path) -> App:
    """Import the `App` named by `entry` in `directory/edgefn.toml` (default `app:app`).

    The entry module is loaded from its file under a name unique to the folder,
    so tests of several functions with an `app.py` each can run in one session.
    """
    directory = Path(directory).resolve()
    manifest = directory / "edgefn.toml"
    entry = "app:app"
    if manifest.exists():
        entry = tomllib.loads(manifest.read_text(encoding="utf-8")).get("entry", entry)
    module_name, _, attribute = entry.partition(":")
    path = directory.joinpath(*module_name.split(".")).with_suffix(".py")
    unique = f"_edgefn_app_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))  # so the entry can import its sibling modules
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load entry module {module_name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    spec.loader.exec_module(module)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise TypeError(f"entry {entry!r} in {directory} does not name an edgefn.App")
    return app


class _NativeImages:
    """edgefn.image's backend natively: the host's Pillow pipeline, in-process, so
    outputs are the same bytes the sandbox would send."""

    def __init__(self, body: bytes, assets: Path | None) -> None:
        self.body = body
        self.assets = assets

    def _data(self, source: tuple[str, Any]) -> bytes:
        kind, value = source
        if kind == "asset":
            if self.assets is None:
                raise ValueError("pass TestClient(..., assets=folder) to read assets")
            return (self.assets / str(value)).read_bytes()
        return bytes(value) if kind == "bytes" else bytes(self.body)

    def probe(self, source: tuple[str, Any]) -> image.ImageInfo:
        from edgefn_runtime.capabilities.image import ImageFailure, probe

        try:
            return probe(self._data(source))
        except ImageFailure as failure:
            image.raise_failure(failure.kind, failure.message)
            raise

    def render(self, source: tuple[str, Any], pipeline: str) -> Response:
        from edgefn_runtime.capabilities.image import Budget, ImageFailure, render

        try:
            rendered = render(self._data(source), _json.loads(pipeline), self.assets, Budget())
        except ImageFailure as failure:
            image.raise_failure(failure.kind, failure.message)
            raise
        return Response(rendered.data, headers={"content-type": rendered.content_type})
