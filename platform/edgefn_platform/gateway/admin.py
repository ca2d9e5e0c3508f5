"""The admin API: deploy, inspect, roll back and delete functions; read their logs;
purge their cached responses.

Every route but the health probes requires `Authorization: Bearer <token>`,
the OpenAPI document at `/openapi.json` included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from edgefn_runtime import EdgefnError

from ..manifest import Manifest
from ..registry import FunctionRecord, VersionRecord, logs_since
from ..registry._model import LOG_LINES_KEPT, PREFIX_MAX_LENGTH
from ._admin_guards import LimitBody, RequireToken
from ._admin_kv import add_kv_routes
from ._admin_secrets import add_secrets_routes, unset_secrets
from ._errors import GatewayError, error_response
from ._request_ids import request_id as checked_request_id
from ._rollout import Rollout
from .config import check_token
from .policy import ConfigError, parse_limits
from .public import Lifecycle, health_routes

if TYPE_CHECKING:
    from .server import Worker

__all__ = ["AdminApp"]


class VersionOut(BaseModel):
    version: int
    route: str
    sha256: str
    size: int
    created_at: float
    limits: dict[str, Any]
    env: list[str]
    # What the version may use, by name (never a value): `edgefn info` shows them.
    key_value_stores: list[str]
    secrets: list[str]

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOut:
        manifest = Manifest.from_dict(record.manifest)
        limits = manifest.resolve_limits()
        return cls(
            version=record.version,
            route=record.route,
            sha256=record.sha256,
            size=record.size,
            created_at=record.created_at,
            limits={f: getattr(limits, f) for f in limits.__dataclass_fields__},
            env=sorted(manifest.env),
            key_value_stores=list(manifest.key_value_stores),
            secrets=list(manifest.secrets),
        )


class WorkerOut(BaseModel):
    """A worker of the gateway that answered, and the function's version it serves
    (None: it serves none)."""

    pid: int
    version: int | None


class FunctionOut(BaseModel):
    name: str
    route: str
    url: str
    active: VersionOut
    versions: int
    updated_at: float
    workers: list[WorkerOut]


class LogOut(BaseModel):
    id: int
    time: float
    request_id: str
    kind: str
    line: str


# SQLite's integers are 64-bit.
_MAX_ID = 2**63 - 1


class ActivateIn(BaseModel):
    version: int = Field(ge=1, le=_MAX_ID)


class LimitOut(BaseModel):
    value: float
    source: str  # manifest, override, default or maximum


class LimitsOut(BaseModel):
    limits: dict[str, LimitOut]
    warnings: list[str]
    workers: list[WorkerOut]


class PurgeIn(BaseModel):
    prefix: str = Field(
        default="/",
        description="Only the cached responses for paths (relative to the function's route, "
        'as the function sees them, without the query) starting with this; "/": all. '
        f"At most {PREFIX_MAX_LENGTH} characters, no control characters, no `?`.",
        examples=["/img/"],
    )


class PurgeOut(BaseModel):
    function: str
    prefix: str
    # Wall-clock seconds: every response cached at or before it under `prefix` is gone.
    purged_at: float
    workers: list[WorkerOut]


class DeployOut(FunctionOut):
    # The version this deploy created (or the active one it matched): with deploys
    # through several gateways at once, `active` may already be a later one.
    version: int
    warnings: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorOut(BaseModel):
    """Every error: a stable `code`, a message to act on, and the request id."""

    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description}
    for status, description in [
        (400, "Invalid request, manifest, component, limits or purge prefix"),
        (401, "Missing or wrong admin token"),
        (404, "No such function or version"),
        (409, "The route is taken by another function"),
        (413, "Upload too large"),
        (503, "The registry database cannot be reached"),
        (504, "Stored, but not every worker of this gateway serves it in time (not_live)"),
        (507, "The data directory or database is full"),
    ]
}


class AdminApp:
    """The admin ASGI app (FastAPI). A change (deploy, rollback, limits, delete)
    refreshes this worker's table at once, then answers only when every worker
    of this gateway serves it (see `_rollout.py`)."""

    def __init__(self, worker: Worker, token: str, lifecycle: Lifecycle) -> None:
        check_token(token)  # here, not only in the middleware, which Starlette builds lazily
        self.registry, self.deployer = worker.registry, worker.deployer
        self.table, self.metrics, self.board = worker.table, worker.metrics, worker.board
        config = worker.config
        self.public_url = config.public_url()
        self.workers, self.rollout_timeout = config.workers, config.rollout_timeout
        # A cache of its own (in the data directory) is this gateway's to prune; one
        # given with --cache-dir may be shared (other gateways, `edgefn dev`, the tests'),
        # where removing an artifact costs whoever else loads it a compile (~8 s).
        self.prunes_aot = config.cache_dir is None
        # No /docs page: its browser fetch of the document could not carry the token.
        self.api = app = FastAPI(
            title="edgefn admin API",
            version="0.1.0",
            responses=_ERRORS,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        # Checked before routing and before any body is read, so an upload without
        # the token costs the server nothing, and unknown paths reveal nothing.
        app.add_middleware(LimitBody, limit=config.max_upload)
        app.add_middleware(RequireToken, token=token)  # added last: runs first
        # Exception (a bug) goes to Starlette's outermost middleware, which re-raises it.
        for handled in (EdgefnError, Exception):
            app.add_exception_handler(handled, self._on_error)
        app.add_exception_handler(HTTPException, self._on_http_error)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, self._on_invalid)  # type: ignore[arg-type]
        for health in health_routes(lifecycle, for_deploys=True):
            app.router.routes.append(health)
        app.add_api_route("/openapi.json", self.openapi, include_in_schema=False)
        app.add_api_route(
            "/metrics", self.render_metrics, response_class=PlainTextResponse,
            include_in_schema=False,
        )  # fmt: skip
        functions, one = "/v1/functions", "/v1/functions/{name}"
        routes: list[tuple[str, str, Any, Any, int]] = [
            ("POST", functions, self.deploy, DeployOut, 201),
            ("GET", functions, self.list_functions, list[FunctionOut], 200),
            ("GET", one, self.show, FunctionOut, 200),
            ("GET", one + "/versions", self.versions, list[VersionOut], 200),
            ("POST", one + "/activate", self.activate, FunctionOut, 200),
            ("GET", one + "/limits", self.limits, LimitsOut, 200),
            ("PATCH", one + "/limits", self.set_limits, LimitsOut, 200),
            ("DELETE", one + "/limits", self.reset_limits, LimitsOut, 200),
            ("DELETE", one, self.delete, None, 204),
            ("POST", one + "/purge", self.purge, PurgeOut, 200),
            ("GET", one + "/logs", self.logs, list[LogOut], 200),
        ]
        for method, path, endpoint, model, status in routes:
            app.add_api_route(
                path, endpoint, methods=[method], response_model=model, status_code=status
            )
        add_kv_routes(app, self.registry, self.table, worker.kv)
        add_secrets_routes(app, self.registry, worker.secrets, self._go_live)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        # Every answer carries an X-Request-Id, successes included: the errors
        # already have one (the client's when acceptable, see `_request_ids.py`).
        given = dict(scope["headers"]).get(b"x-request-id")
        rid = checked_request_id(given.decode("latin-1") if given is not None else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.api(scope, receive, send_with_id)

    @property
    def routes(self) -> list[BaseRoute]:
        """Every route, as Starlette's `app.routes`."""
        return self.api.routes

    async def _on_error(self, request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, checked_request_id(request.headers.get("x-request-id")))

    async def _on_http_error(self, request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own 404 and 405, in the gateway's error shape. Its 405 lists only
        # the first route whose path matched; Allow must list every method of the path.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["allow"] = ", ".join(_methods_of(self.api, request.url.path))
        codes = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        error = GatewayError(exc.status_code, code, str(exc.detail), headers)
        return error_response(error, checked_request_id(request.headers.get("x-request-id")))

    async def _on_invalid(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(
            GatewayError(400, "invalid_request", problems),
            checked_request_id(request.headers.get("x-request-id")),
        )

    def _workers(self, name: str, rollout: Rollout | None) -> list[WorkerOut]:
        """Each worker of this gateway and the version of `name` it serves."""
        rollout = rollout or Rollout(self.board.workers())
        return [WorkerOut(pid=pid, version=version) for pid, version in rollout.versions(name)]

    def _out(self, record: FunctionRecord, rollout: Rollout | None = None) -> FunctionOut:
        return FunctionOut(
            name=record.name,
            route=record.route,
            url=self.public_url + record.route,
            active=VersionOut.of(record.active),
            versions=record.versions,
            updated_at=record.updated_at,
            workers=self._workers(record.name, rollout),
        )

    def _go_live(self, name: str, change: str) -> Rollout:
        """Load the change on this worker now, then wait for every other one."""
        generation = self.table.refresh()
        return self.board.wait_until_live(
            generation, self.workers, name, change, self.rollout_timeout
        )

    def openapi(self) -> JSONResponse:
        """This API's OpenAPI document."""
        return JSONResponse(self.api.openapi())

    def render_metrics(self) -> PlainTextResponse:
        """Prometheus metrics of every worker."""
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def deploy(
        self,
        manifest: Annotated[str, Form(description="The function's edgefn.toml")],
        component: Annotated[UploadFile, File(description="The .wasm built by edgefn build")],
        assets: Annotated[UploadFile | None, File(description="tar.gz of the assets")] = None,
    ) -> DeployOut:
        """Deploy a new version and make it active. Limits above the operator's
        maximums are clamped, with a warning in `warnings`. Answers once every
        worker of this gateway serves it (`workers`)."""
        if (component.size or 0) == 0:
            raise GatewayError(400, "invalid_component", "the component file is empty")
        # Async only to read the upload; the work (and every registry call) runs
        # on a thread, never on the event loop.
        return await run_in_threadpool(
            self._deploy, manifest, component.file, assets.file if assets else None
        )

    def _deploy(self, manifest: str, component: BinaryIO, assets: BinaryIO | None) -> DeployOut:
        version = self.deployer.deploy(manifest, component, assets)
        self.metrics.deploys.labels(version.function).inc()
        change = f"{version.function} version {version.version}"
        try:
            rollout = self._go_live(version.function, change)
        finally:
            self.deployer.take_loaded(version)  # unless the table took it
        record = self.registry.function(version.function)
        warnings = self.table.effective(record).warnings
        declared = Manifest.from_dict(record.active.manifest).secrets
        warnings = [*warnings, *unset_secrets(self.registry, record.name, declared)]
        out = self._out(record, rollout)
        return DeployOut(**out.model_dump(), version=version.version, warnings=warnings)

    def list_functions(self) -> list[FunctionOut]:
        rollout = Rollout(self.board.workers())
        return [self._out(record, rollout) for record in self.registry.functions()]

    def show(self, name: str) -> FunctionOut:
        """The function, its active version, and the version each worker serves."""
        return self._out(self.registry.function(name))

    def versions(self, name: str) -> list[VersionOut]:
        return [VersionOut.of(v) for v in self.registry.versions(name)]

    def activate(self, name: str, body: ActivateIn) -> FunctionOut:
        """Make an earlier (or later) version active: a rollback, with no recompile.
        Answers once every worker of this gateway serves it."""
        record = self.registry.activate(name, body.version)
        self.metrics.activations.labels(name).inc()
        rollout = self._go_live(name, f"{name} version {body.version}")
        return self._out(record, rollout)

    def _limits_out(self, record: FunctionRecord, rollout: Rollout | None = None) -> LimitsOut:
        effective = self.table.effective(record)
        return LimitsOut(
            limits={
                k: LimitOut(value=v, source=effective.sources[k])
                for k, v in effective.values.items()
            },
            warnings=effective.warnings,
            workers=self._workers(record.name, rollout),
        )

    def limits(self, name: str) -> LimitsOut:
        """Each effective limit and where it came from."""
        return self._limits_out(self.registry.function(name))

    def set_limits(self, name: str, body: dict[str, str | int | float]) -> LimitsOut:
        """Override limits live, e.g. `{"memory": "128MiB", "timeout": "3s"}`; answers
        once every worker of this gateway applies them to its next request."""
        try:
            changes = parse_limits(body, "limits")
        except ConfigError as exc:
            raise GatewayError(400, "invalid_limits", str(exc)) from None
        record = self.registry.set_overrides(name, changes, merge=True)
        return self._limits_out(record, self._go_live(name, f"the new limits of {name}"))

    def reset_limits(self, name: str) -> LimitsOut:
        """Drop every live override: back to the manifest and the defaults."""
        record = self.registry.set_overrides(name, {})
        return self._limits_out(record, self._go_live(name, f"the reset limits of {name}"))

    def delete(self, name: str) -> None:
        """Remove the function; answers once no worker of this gateway serves it."""
        for sha256 in self.registry.delete(name):
            if self.prunes_aot:
                self.deployer.engine.aot.remove(sha256)
        self._go_live(name, f"the removal of {name}")

    def purge(self, name: str, body: PurgeIn | None = None) -> PurgeOut:
        """Drop the function's cached responses (all, or those under `prefix`) on every
        worker of every gateway sharing the registry; answers once every worker of
        this gateway applies it (the others within a second). Its next request for
        each runs the function."""
        prefix = (body or PurgeIn()).prefix
        purged_at = self.registry.purge(name, prefix)
        rollout = self._go_live(name, f"the purge of {name} {prefix}")
        return PurgeOut(
            function=name,
            prefix=prefix,
            purged_at=purged_at,
            workers=self._workers(name, rollout),
        )

    def logs(
        self,
        name: str,
        response: Response,
        after: Annotated[int, Query(ge=0, le=_MAX_ID, description="Only lines after this id")] = 0,
        limit: Annotated[
            int, Query(ge=1, le=LOG_LINES_KEPT, description="At most this many lines")
        ] = 200,
        request_id: Annotated[
            str | None,
            # No control characters: PostgreSQL text cannot even hold a NUL.
            Query(
                min_length=1,
                max_length=1024,
                pattern=r"^[^\x00-\x1f\x7f]+$",
                description="Only the lines of the request with this X-Request-Id",
            ),
        ] = None,
        oldest: Annotated[
            bool,
            Query(
                description="The oldest `limit` lines after `after` rather than the newest: "
                "to read on from the last line seen without a gap (`edgefn logs --follow`)"
            ),
        ] = False,
    ) -> list[LogOut]:
        """Recent log lines (the function's own and one access line per request),
        oldest first. `X-Edgefn-More: 1`: lines were left out (with `oldest`, lines
        after the last one returned: ask again from there). `X-Edgefn-Skipped: 1`
        (with `oldest`): the line `after` is no longer kept, so lines after it may
        have been dropped before they were read (LOG_LINES_KEPT per function)."""
        self.registry.function(name)
        more = skipped = False
        if oldest:
            rows, skipped = logs_since(self.registry, name, after, request_id)
            more, rows = len(rows) > limit, rows[:limit]
        else:
            rows = self.registry.logs(name, after, limit + 1, request_id)
            more, rows = len(rows) > limit, rows[-limit:]
        response.headers["x-edgefn-more"] = "1" if more else "0"
        response.headers["x-edgefn-skipped"] = "1" if skipped else "0"
        return [
            LogOut(id=r.id, time=r.time, request_id=r.request_id, kind=r.kind, line=r.line)
            for r in rows
        ]


def _methods_of(app: FastAPI, path: str) -> list[str]:
    methods = set()
    for route in app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(path):
            methods |= route.methods
    return sorted(methods)
