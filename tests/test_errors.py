"""One error tree: every host error is an `EdgefnError` carrying its HTTP status
and code, and the gateway answers every exception in one place."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pkgutil

import pytest

import edgefn_platform
from edgefn_platform.builder import BuildError
from edgefn_platform.client import AdminError, GatewayUnreachable
from edgefn_platform.gateway import InvalidAssets
from edgefn_platform.gateway._deploy import StorageFull
from edgefn_platform.gateway._errors import GatewayError, error_response
from edgefn_platform.gateway.config import TokenError
from edgefn_platform.gateway.policy import ConfigError
from edgefn_platform.manifest import ManifestError
from edgefn_platform.registry import (
    FunctionNotFound,
    RegistryError,
    RegistryUnavailable,
    RouteConflict,
    VersionNotFound,
)
from edgefn_platform.scaffold import ScaffoldError
from edgefn_runtime import (
    BodyTooLarge,
    EdgefnError,
    FuelExhausted,
    GuestCrashed,
    GuestError,
    InvalidComponent,
    InvalidResponse,
    MemoryLimitExceeded,
    ResponseTooLarge,
    Timeout,
)

# Private exceptions that never leave their module: `_http._Refused` only stops
# httptools' parser, after the connection has been answered; `kv._store._Refused`
# carries a quota refusal out of a write's block, so that its sweep still commits.
PRIVATE = {"edgefn_platform.gateway._http._Refused", "edgefn_platform.kv._store._Refused"}
# Run as scripts or read at a later import (the metrics module wants its
# environment variable first), never imported here.
NOT_IMPORTED = {
    "edgefn_platform.__main__",
    "edgefn_platform._entry_check",
    "edgefn_platform.gateway._metrics",
}


def _platform_exceptions() -> list[type[BaseException]]:
    found = []
    for module_info in pkgutil.walk_packages(edgefn_platform.__path__, "edgefn_platform."):
        name = module_info.name
        if name in NOT_IMPORTED or name.startswith("edgefn_platform.templates"):
            continue
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == name:
                found.append(value)
    return found


def test_every_platform_error_is_an_edgefn_error() -> None:
    exceptions = _platform_exceptions()
    assert ManifestError in exceptions and StorageFull in exceptions  # the walk sees them
    outside = [
        f"{e.__module__}.{e.__qualname__}"
        for e in exceptions
        if not issubclass(e, EdgefnError) and f"{e.__module__}.{e.__qualname__}" not in PRIVATE
    ]
    assert outside == []


# What the gateway answered for each before the tree, from its old tables.
STATUS_AND_CODE = [
    (ManifestError("edgefn.toml", ["name: required"]), 400, "invalid_manifest"),
    (InvalidComponent("not a component"), 400, "invalid_component"),
    (InvalidAssets("not a gzip'd tar"), 400, "invalid_assets"),
    (StorageFull("the disk is full"), 507, "insufficient_storage"),
    (RegistryError("refused"), 400, "registry_error"),
    (FunctionNotFound("ghost"), 404, "function_not_found"),
    (VersionNotFound("ghost", 3), 404, "version_not_found"),
    (RouteConflict("/a", "other"), 409, "route_conflict"),
    (RegistryUnavailable("down"), 503, "registry_unavailable"),
    (BodyTooLarge("big"), 413, "body_too_large"),
    (GuestError("KeyError", "'x'"), 500, "function_error"),
    (GuestCrashed("trap"), 502, "function_crashed"),
    (InvalidResponse("101"), 502, "invalid_response"),
    (ResponseTooLarge("big"), 502, "response_too_large"),
    (Timeout("slow"), 504, "timeout"),
    (FuelExhausted("spent"), 503, "fuel_exhausted"),
    (MemoryLimitExceeded("full"), 503, "memory_limit"),
    (GatewayError(503, "overloaded", "busy", {"retry-after": "1"}), 503, "overloaded"),
    # Never answered by the gateway, but codes in the same tree.
    (ConfigError("backpressure: bad"), 400, "invalid_config"),
    (TokenError("empty"), 500, "unusable_admin_token"),
    (BuildError("componentize-py failed"), 400, "build_failed"),
    (ScaffoldError("exists"), 400, "scaffold_failed"),
    (AdminError(404, "function_not_found", "no such function"), 404, "function_not_found"),
    (GatewayUnreachable("connection refused"), 503, "unreachable"),
]


@pytest.mark.parametrize(
    ("error", "status", "code"), STATUS_AND_CODE, ids=lambda e: type(e).__name__
)
def test_each_error_answers_with_its_own_status_and_code(
    error: EdgefnError, status: int, code: str
) -> None:
    assert (error.status, error.code) == (status, code)
    response = error_response(error, "req-1")
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body == {"error": {"code": code, "message": str(error), "request_id": "req-1"}}
    assert response.headers["x-request-id"] == "req-1"


def test_a_gateway_error_sends_its_headers() -> None:
    response = error_response(GatewayError(503, "overloaded", "busy", {"retry-after": "1"}), "r")
    assert response.headers["retry-after"] == "1"


def test_errors_that_were_value_errors_still_are() -> None:
    for error in (ManifestError("x", ["y"]), ConfigError("x"), TokenError("x"), InvalidAssets("x")):
        assert isinstance(error, ValueError) and isinstance(error, EdgefnError)


def test_any_other_exception_is_a_logged_500_that_reveals_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise ZeroDivisionError("secret detail")
    except ZeroDivisionError as exc:
        with caplog.at_level(logging.ERROR, logger="edgefn.gateway"):
            response = error_response(exc, "req-2")
    assert response.status_code == 500
    error = json.loads(bytes(response.body))["error"]
    assert error == {
        "code": "internal_error",
        "message": "the gateway failed on this request",
        "request_id": "req-2",
    }
    (record,) = caplog.records
    assert "req-2" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
