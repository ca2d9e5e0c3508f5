"""Run an `App` natively, in-process, without WebAssembly.

>>> from edgefn.testing import TestClient
>>> client = TestClient(app)
>>> response = client.get("/items/42?verbose=1")
>>> assert response.status == 200 and response.json() == {"id": 42}
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json as _json
import sys
import tomllib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import edgefn_contract.image as contract

from . import image, kv, outbound, secrets
from ._datastructures import Headers
from ._memory_kv import MemoryKV
from ._requests import Request
from ._responses import Response
from ._routing import App
from .outbound import FetchRequest, FetchResponse, OutboundFailed, OutboundNotAllowed

__all__ = [
    "FetchAnswers",
    "FetchRequest",
    "FetchResponse",
    "MemoryKV",
    "TestClient",
    "TestResponse",
    "load_app",
]

FetchAnswer = FetchResponse | bytes | str
FetchAnswers = Mapping[str, FetchAnswer] | Callable[[FetchRequest], FetchAnswer]
"""What `TestClient(fetch=...)` takes: answers by URL, or a function of the request."""


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
    handler propagates into the test; with `False` it becomes a 500
    `function_error`, as it does behind the gateway, `SystemExit` included
    (only `KeyboardInterrupt` still stops the tests).

    `assets` is the folder `Image.from_asset()` reads; a relative path is read
    from the function's folder (the one `load_app` loaded, or else the folder
    of the module that defines the app's first route), never from the working
    directory, so tests pass wherever pytest runs.

    `fetch` answers the app's outbound requests (`edgefn.fetch`, `Image.from_url`)
    natively, never from the network: a mapping `{url: answer}` or a callable
    `(FetchRequest) -> answer`, where an answer is a `FetchResponse`, or bytes or
    str for a 200. The callable may raise `OutboundTimeout` & co. to simulate
    failures; a URL the mapping lacks raises `OutboundNotAllowed`, as an
    undeclared host would. `fetched` lists the requests the app made, each with
    its `cache` flag (natively nothing is cached: every fetch is answered).

    `kv` keeps the app's key-value stores (`edgefn.kv`): a `MemoryKV` the test
    fills and inspects, or a fresh one per client when None. `secrets` are the
    values `edgefn.secrets.get` reads, `{"NAME": "value"}`. When the client finds
    the function's edgefn.toml, the stores and secret names it declares are
    checked as the host would (`StoreNotDeclared`, `SecretNotDeclared`); a
    declared secret the mapping lacks reads as None, as an unset one does.
    """

    __test__ = False

    def __init__(
        self,
        app: App,
        *,
        raise_exceptions: bool = True,
        assets: str | Path | None = None,
        fetch: FetchAnswers | None = None,
        kv: MemoryKV | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.raise_exceptions = raise_exceptions
        self.assets = _assets_folder(app, Path(assets)) if assets is not None else None
        if fetch is not None and not (isinstance(fetch, Mapping) or callable(fetch)):
            raise TypeError(
                f"TestClient's fetch must be a mapping or a callable, got {type(fetch).__name__}"
            )
        self.fetched: list[FetchRequest] = []
        self._outbound = _NativeFetch(fetch, self.fetched)
        manifest = _manifest(app)
        if kv is not None and not isinstance(kv, MemoryKV):
            raise TypeError(f"TestClient's kv must be a MemoryKV, got {type(kv).__name__}")
        self.kv = kv if kv is not None else MemoryKV()
        if self.kv.declared is None and manifest:
            self.kv.declared = frozenset(manifest["key_value_stores"])
        if secrets is not None and not isinstance(secrets, Mapping):
            raise TypeError(f"TestClient's secrets must be a mapping, got {type(secrets).__name__}")
        self._secrets = _NativeSecrets(
            dict(secrets or {}),
            frozenset(manifest["secrets"]) if manifest else None,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Iterable[bytes] = b"",
        json: Any = None,
    ) -> TestResponse:
        """`body` may be chunks, which `request.stream()` then yields one by one,
        as a streamed upload (`stream_request_body`) arrives."""
        path, _, query = path.partition("?")
        header_items = list((headers or {}).items())
        if json is not None:
            body = _json.dumps(json)
            header_items.append(("content-type", "application/json"))
        if isinstance(body, str):
            body = body.encode()
        chunks: bytes | Iterator[bytes]
        if isinstance(body, (bytes, bytearray, memoryview)):
            chunks = body = bytes(body)
        else:  # the host hands a function no empty chunk
            parts = [bytes(part) for part in body if part]
            chunks, body = iter(parts), b"".join(parts)
        request = Request(method, path, query_string=query, headers=header_items, body=chunks)
        outbound.use_backend(self._outbound)
        kv.use_backend(self.kv)
        secrets.use_backend(self._secrets)
        image.use_backend(_NativeImages(body, self.assets, self._outbound))
        try:
            response = self.app.handle(request)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - the sandbox catches them all too
            if self.raise_exceptions:
                raise
            # As the sandbox words a GuestError: "SystemExit: 3", or "SystemExit" alone.
            kind = type(exc).__name__
            message = f"{kind}: {exc}" if str(exc) else kind
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
    _FOLDERS[app] = directory
    return app


# The function folder of each App `load_app` returned: where relative assets are.
_FOLDERS: weakref.WeakKeyDictionary[App, Path] = weakref.WeakKeyDictionary()


def _manifest(app: App) -> dict[str, Any]:
    """The function's edgefn.toml (`key_value_stores`, `secrets`), {} without one."""
    path = _function_folder(app) / "edgefn.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {
        "key_value_stores": list(data.get("key_value_stores", [])),
        "secrets": list(data.get("secrets", [])),
    }


class _NativeSecrets:
    """edgefn.secrets natively: the test's values, for the names the manifest declares."""

    def __init__(self, values: dict[str, str], declared: frozenset[str] | None) -> None:
        self.values, self.declared = values, declared

    def get(self, name: str) -> str | None:
        if self.declared is not None and name not in self.declared:
            raise secrets.SecretNotDeclared(
                f"the secret {name!r} is not declared in this function's manifest; declare it "
                f'with secrets = ["{name}"] in edgefn.toml and set it with '
                f"`edgefn secrets set FUNCTION {name}`"
            )
        return self.values.get(name)


def _function_folder(app: App) -> Path:
    """The folder of the function `app` belongs to; the working directory only
    for an app that has no route to tell."""
    if app in _FOLDERS:
        return _FOLDERS[app]
    for route in app.routes:
        module = sys.modules.get(getattr(route.handler, "__module__", ""))
        file = getattr(module, "__file__", None)
        if file:
            return Path(file).resolve().parent
    return Path.cwd()


def _assets_folder(app: App, assets: Path) -> Path:
    folder = assets if assets.is_absolute() else _function_folder(app) / assets
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no assets folder {str(folder)!r} (a relative `assets` is read from the "
            f"function's folder, {str(_function_folder(app))!r})"
        )
    return folder


class _NativeImages:
    """edgefn.image's backend natively: the host's image service, in-process.

    The runtime registers it under the `edgefn.testing` entry point group, so this
    SDK never imports the runtime, and a test runs the same host code, with the
    same checks and the same output bytes, as the sandbox would.
    """

    def __init__(self, body: bytes, assets: Path | None, fetcher: outbound.Backend) -> None:
        self.body = body
        self.assets = assets
        self.fetcher = fetcher
        self._service: contract.ImageService | None = None
        self._originals: dict[str, bytes] = {}

    def _host(self) -> contract.ImageService:
        if self._service is None:
            self._service = _image_service_factory()(body=self.body, assets=self.assets)
        return self._service

    def _fetched(self, source: tuple[str, Any]) -> tuple[contract.ImageService, tuple[str, Any]]:
        """The service and source to run: a `url` source is fetched through the
        test's answers, then its bytes run as a body would, with the same checks."""
        if source[0] != "url":
            return self._host(), source
        url = str(source[1])
        # Fetched once per request, as the host does; `Image.from_url` always may
        # be answered from the origin cache.
        if url not in self._originals:
            answer = self.fetcher.fetch(FetchRequest("GET", url, [], b"", None, cache=True))
            if not answer.ok:
                raise OutboundFailed(f"{url} answered {answer.status}, not an image")
            self._originals[url] = answer.body
        body = self._originals[url]
        return _image_service_factory()(body=body, assets=self.assets), ("body", None)

    def probe(self, source: tuple[str, Any]) -> image.ImageInfo:
        service, source = self._fetched(source)
        try:
            return service.probe(source)
        except contract.ImageFailure as failure:
            image.raise_failure(failure.kind, failure.message)
            raise

    def render(self, source: tuple[str, Any], pipeline: str) -> Response:
        service, source = self._fetched(source)
        try:
            rendered = service.render(source, pipeline)
        except contract.ImageFailure as failure:
            image.raise_failure(failure.kind, failure.message)
            raise
        return Response(rendered.data, headers={"content-type": rendered.content_type})


class _NativeFetch:
    """edgefn.fetch's backend natively: the test's answers, never the network."""

    def __init__(self, answers: FetchAnswers | None, fetched: list[FetchRequest]) -> None:
        self.answers = answers
        self.fetched = fetched

    def fetch(self, request: FetchRequest) -> FetchResponse:
        self.fetched.append(request)
        if self.answers is None:
            raise OutboundNotAllowed(
                f"{request.method} {request.url}: edgefn.testing never uses the network; "
                "answer outbound requests with TestClient(app, fetch={url: FetchResponse(...)}) "
                "or fetch=a callable taking the FetchRequest"
            )
        if isinstance(self.answers, Mapping):
            if request.url not in self.answers:
                urls = sorted(self.answers)
                known = ", ".join(urls[:5]) or "nothing"
                if len(urls) > 5:
                    known += f" and {len(urls) - 5} more"
                raise OutboundNotAllowed(
                    f"{request.url} is not in TestClient's `fetch` mapping (it has {known})"
                )
            answer = self.answers[request.url]
        else:
            answer = self.answers(request)
        if isinstance(answer, (bytes, str)):
            answer = FetchResponse(200, body=answer)
        if not isinstance(answer, FetchResponse):
            raise TypeError(
                f"TestClient's fetch answered {request.url} with {type(answer).__name__}; "
                "answer with a FetchResponse, bytes or str"
            )
        # As the host answers: the URL that answered, and no body to a HEAD.
        if not answer.url or (request.method == "HEAD" and answer.body):
            body = b"" if request.method == "HEAD" else answer.body
            answer = FetchResponse(answer.status, answer.headers, body, answer.url or request.url)
        return answer


@functools.cache
def _image_service_factory() -> contract.ImageServiceFactory:
    found = entry_points(group=contract.ENTRY_POINT_GROUP, name=contract.ENTRY_POINT_NAME)
    if not found:
        raise RuntimeError(
            "edgefn.image runs natively through edgefn's runtime, which is not installed "
            f"(no {contract.ENTRY_POINT_NAME!r} entry point in the "
            f"{contract.ENTRY_POINT_GROUP!r} group); install edgefn with its runtime "
            "(`pip install edgefn`) to test image functions"
        )
    factory: contract.ImageServiceFactory = next(iter(found)).load()
    return factory
