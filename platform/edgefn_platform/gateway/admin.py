"""The admin API: deploy, inspect, roll back and delete functions; read their logs.

Every route but the health probes requires `Authorization: Bearer <token>`,
the OpenAPI document at `/openapi.json` included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Route

from edgefn_runtime import EdgefnError

from ..manifest import Manifest
from ..registry import FunctionRecord, VersionRecord
from ._admin_guards import LimitBody, RequireToken
from ._errors import GatewayError, error_response
from ._request_ids import request_id as checked_request_id
from .config import check_token
from .policy import ConfigError, parse_limits
from .public import Lifecycle, health_routes

if TYPE_CHECKING:
    from .server import Worker

__all__ = ["create_admin_app"]


class VersionOut(BaseModel):
    version: int
    route: str
    sha256: str
    size: int
    created_at: float
    limits: dict[str, Any]
    env: list[str]

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
        )


class FunctionOut(BaseModel):
    name: str
    route: str
    url: str
    active: VersionOut
    versions: int
    updated_at: float


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
        (400, "Invalid request, manifest, component or limits"),
        (401, "Missing or wrong admin token"),
        (404, "No such function or version"),
        (409, "The route is taken by another function"),
        (413, "Upload too large"),
        (503, "The registry database cannot be reached"),
        (507, "The data directory or database is full"),
    ]
}


def create_admin_app(worker: Worker, token: str, lifecycle: Lifecycle) -> FastAPI:
    """The admin FastAPI app; the worker's table is refreshed at once after each change."""
    from ._metrics import METRICS, render

    check_token(token)  # here, not only in the middleware, which Starlette builds lazily
    registry, deployer, table = worker.registry, worker.deployer, worker.table
    public_url, max_upload = worker.config.public_url(), worker.config.max_upload

    # No /docs page: its browser fetch of the document could not carry the token.
    app = FastAPI(
        title="edgefn admin API",
        version="0.1.0",
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, checked_request_id(request.headers.get("x-request-id")))

    # Checked before routing and before any body is read, so an upload without
    # the token costs the server nothing, and unknown paths reveal nothing.
    app.add_middleware(LimitBody, limit=max_upload)
    app.add_middleware(RequireToken, token=token)  # added last: runs first

    # Exception (a bug) goes to Starlette's outermost middleware, which re-raises it.
    for handled in (EdgefnError, Exception):
        app.add_exception_handler(handled, on_error)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own 404 and 405, in the gateway's error shape. Its 405 lists only
        # the first route whose path matched; Allow must list every method of the path.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["allow"] = ", ".join(_methods_of(app, request.url.path))
        codes = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        error = GatewayError(exc.status_code, code, str(exc.detail), headers)
        return error_response(error, checked_request_id(None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(
            GatewayError(400, "invalid_request", problems), checked_request_id(None)
        )

    def out(record: FunctionRecord) -> FunctionOut:
        return FunctionOut(
            name=record.name,
            route=record.route,
            url=public_url + record.route,
            active=VersionOut.of(record.active),
            versions=record.versions,
            updated_at=record.updated_at,
        )

    for route in health_routes(lifecycle, for_deploys=True):
        app.router.routes.append(route)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        """This API's OpenAPI document."""
        return JSONResponse(app.openapi())

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    def metrics() -> PlainTextResponse:
        """Prometheus metrics of every worker."""
        return PlainTextResponse(render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/functions", status_code=201, response_model=DeployOut)
    async def deploy(
        request: Request,
        manifest: Annotated[str, Form(description="The function's edgefn.toml")],
        component: Annotated[UploadFile, File(description="The .wasm built by edgefn build")],
        assets: Annotated[UploadFile | None, File(description="tar.gz of the assets")] = None,
    ) -> DeployOut:
        """Deploy a new version and make it active. Limits above the operator's
        maximums are clamped, with a warning in `warnings`."""
        if (component.size or 0) == 0:
            raise GatewayError(400, "invalid_component", "the component file is empty")
        version = await run_in_threadpool(
            deployer.deploy, manifest, component.file, assets.file if assets else None
        )
        METRICS.deploys.labels(version.function).inc()
        await run_in_threadpool(table.refresh)
        record = registry.function(version.function)
        warnings = table.effective(record).warnings
        return DeployOut(**out(record).model_dump(), version=version.version, warnings=warnings)

    @app.get("/v1/functions", response_model=list[FunctionOut])
    def list_functions() -> list[FunctionOut]:
        return [out(record) for record in registry.functions()]

    @app.get("/v1/functions/{name}", response_model=FunctionOut)
    def show(name: str) -> FunctionOut:
        return out(registry.function(name))

    @app.get("/v1/functions/{name}/versions", response_model=list[VersionOut])
    def versions(name: str) -> list[VersionOut]:
        return [VersionOut.of(v) for v in registry.versions(name)]

    @app.post("/v1/functions/{name}/activate", response_model=FunctionOut)
    def activate(name: str, body: ActivateIn) -> FunctionOut:
        """Make an earlier (or later) version active: a rollback, with no recompile."""
        record = registry.activate(name, body.version)
        METRICS.activations.labels(name).inc()
        table.refresh()
        return out(record)

    def limits_out(record: FunctionRecord) -> LimitsOut:
        effective = table.effective(record)
        return LimitsOut(
            limits={
                k: LimitOut(value=v, source=effective.sources[k])
                for k, v in effective.values.items()
            },
            warnings=effective.warnings,
        )

    @app.get("/v1/functions/{name}/limits", response_model=LimitsOut)
    def limits(name: str) -> LimitsOut:
        """Each effective limit and where it came from."""
        return limits_out(registry.function(name))

    @app.patch("/v1/functions/{name}/limits", response_model=LimitsOut)
    def set_limits(name: str, body: dict[str, str | int | float]) -> LimitsOut:
        """Override limits live, e.g. `{"memory": "128MiB", "timeout": "3s"}`; every
        worker applies them to its next request."""
        try:
            changes = parse_limits(body, "limits")
        except ConfigError as exc:
            raise GatewayError(400, "invalid_limits", str(exc)) from None
        record = registry.set_overrides(name, changes, merge=True)
        table.refresh()
        return limits_out(record)

    @app.delete("/v1/functions/{name}/limits", response_model=LimitsOut)
    def reset_limits(name: str) -> LimitsOut:
        """Drop every live override: back to the manifest and the defaults."""
        record = registry.set_overrides(name, {})
        table.refresh()
        return limits_out(record)

    @app.delete("/v1/functions/{name}", status_code=204)
    def delete(name: str) -> None:
        """Remove the function; its route stops answering at once."""
        for sha256 in registry.delete(name):
            deployer.engine.aot.remove(sha256)
        table.refresh()

    @app.get("/v1/functions/{name}/logs", response_model=list[LogOut])
    def logs(
        name: str,
        after: Annotated[int, Query(ge=0, le=_MAX_ID, description="Only lines after this id")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
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
    ) -> list[LogOut]:
        """Recent log lines (the function's own and one access line per request)."""
        registry.function(name)
        return [
            LogOut(id=r.id, time=r.time, request_id=r.request_id, kind=r.kind, line=r.line)
            for r in registry.logs(name, after, limit, request_id)
        ]

    return app


def _methods_of(app: FastAPI, path: str) -> list[str]:
    methods = set()
    for route in app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(path):
            methods |= route.methods
    return sorted(methods)
