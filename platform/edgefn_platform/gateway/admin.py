"""The admin API: deploy, inspect, roll back and delete functions; read their logs.

Every route requires `Authorization: Bearer <token>`. OpenAPI docs at `/docs`.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..manifest import Manifest
from ..registry import FunctionRecord, Registry, VersionRecord
from ._deploy import Deployer
from ._errors import HANDLED, GatewayError, error_response, status_and_code
from ._functions import FunctionTable

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


class ActivateIn(BaseModel):
    version: int


def create_admin_app(
    registry: Registry,
    deployer: Deployer,
    table: FunctionTable,
    token: str,
    public_url: str,
    max_upload: int,
) -> FastAPI:
    """The admin FastAPI app; `table` is refreshed at once after each change."""

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise GatewayError(
                401,
                "unauthorized",
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                {"www-authenticate": "Bearer"},
            )

    app = FastAPI(title="edgefn admin API", version="0.1.0", dependencies=[Depends(authorize)])

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            status_and_code(exc)
        except TypeError:  # a bug: answer in the same shape; Starlette logs the traceback
            exc = GatewayError(500, "internal_error", f"{type(exc).__name__}: {exc}")
        return error_response(exc, request_id)

    for handled in (*HANDLED, Exception):
        app.add_exception_handler(handled, on_error)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error_response(GatewayError(400, "invalid_request", problems), uuid.uuid4().hex)

    def out(record: FunctionRecord) -> FunctionOut:
        return FunctionOut(
            name=record.name,
            route=record.route,
            url=public_url + record.route,
            active=VersionOut.of(record.active),
            versions=record.versions,
            updated_at=record.updated_at,
        )

    @app.post("/v1/functions", status_code=201, response_model=FunctionOut)
    async def deploy(
        request: Request,
        manifest: Annotated[str, Form(description="The function's edgefn.toml")],
        component: Annotated[UploadFile, File(description="The .wasm built by edgefn build")],
        assets: Annotated[UploadFile | None, File(description="tar.gz of the assets")] = None,
    ) -> FunctionOut:
        """Deploy a new version and make it active."""
        declared = int(request.headers.get("content-length") or 0)
        sizes = [declared, component.size or 0, (assets.size or 0) if assets else 0]
        if max(sizes) > max_upload:
            raise GatewayError(
                413, "upload_too_large", f"upload exceeds the limit of {max_upload} bytes"
            )
        if (component.size or 0) == 0:
            raise GatewayError(400, "invalid_component", "the component file is empty")
        version = await run_in_threadpool(
            deployer.deploy, manifest, component.file, assets.file if assets else None
        )
        await run_in_threadpool(table.refresh)
        return out(registry.function(version.function))

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
        table.refresh()
        return out(record)

    @app.delete("/v1/functions/{name}", status_code=204)
    def delete(name: str) -> None:
        """Remove the function; its route stops answering at once."""
        for sha256 in registry.delete(name):
            deployer.engine.aot.remove(sha256)
        table.refresh()

    @app.get("/v1/functions/{name}/logs", response_model=list[LogOut])
    def logs(
        name: str,
        after: Annotated[int, Query(ge=0, description="Only lines after this id")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[LogOut]:
        """Recent log lines (the function's own and one access line per request)."""
        registry.function(name)
        return [
            LogOut(id=r.id, time=r.time, request_id=r.request_id, kind=r.kind, line=r.line)
            for r in registry.logs(name, after, limit)
        ]

    return app
