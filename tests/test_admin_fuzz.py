"""The admin API fuzzed from its own OpenAPI document (schemathesis): with and
without the token, no operation answers 500 and every response matches the
schema. Bounded here; `make fuzz` runs many more examples."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method
from starlette.applications import Starlette

import attacks
from edgefn_platform.gateway.admin import AdminApp
from edgefn_platform.gateway.config import GatewayConfig
from edgefn_platform.gateway.public import Lifecycle
from edgefn_platform.gateway.server import Worker

ROOT = Path(__file__).resolve().parent.parent
AREA = "Admin API fuzzing (tests/test_admin_fuzz.py)"
TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("EDGEFN_FUZZ_EXAMPLES", "25"))


def _admin_app() -> tuple[Worker, Starlette]:
    data_dir = Path(tempfile.mkdtemp(prefix="edgefn-fuzz-")) / "data"
    # One worker, in this process: a change is live once its own table has it.
    config = GatewayConfig(
        data_dir=data_dir, workers=1, token=TOKEN, cache_dir=ROOT / ".cache" / "edgefn"
    )
    worker = Worker.open(config)
    return worker, AdminApp(worker, TOKEN, Lifecycle(worker.table))


# schemathesis reads the schema when pytest collects this module (its fixture-based
# loader does not work with pytest 9), so the app is made here and closed below.
_worker, _app = _admin_app()
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _app, headers={"authorization": f"Bearer {TOKEN}"}
)


@pytest.fixture(scope="module", autouse=True)
def _close_worker() -> Iterator[None]:
    yield
    _worker.close()
    shutil.rmtree(_worker.config.data_dir.parent, ignore_errors=True)


calls: dict[str, int] = {}


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_fails_or_breaks_its_schema(case: Case) -> None:
    # Half the cases carry the token, so the fuzzer reaches past authentication.
    authorized = hash(repr(case.path_parameters) + repr(case.query)) % 2 == 0
    headers = {"authorization": f"Bearer {TOKEN}"} if authorized else {}
    # Limits and manifests have rules JSON Schema cannot state ("at least 16MiB"),
    # so schema-valid data may rightly get a 400. Without the token, 401 comes
    # before the 405 for a method the path lacks.
    excluded = [positive_data_acceptance] + ([] if authorized else [unsupported_method])
    response = case.call_and_validate(headers=headers, excluded_checks=excluded)
    assert response.status_code < 500, response.text
    if not authorized and case.path not in ("/healthz", "/readyz"):
        assert response.status_code == 401
    key = f"{case.method} {case.path}"
    calls[key] = calls.get(key, 0) + 1


def test_the_fuzzing_is_recorded() -> None:
    assert calls, "the schemathesis test did not run"
    attacks.record(
        AREA,
        f"schemathesis: {sum(calls.values())} generated requests over {len(calls)} operations",
        "no 5xx; every response matched the OpenAPI schema; without the token, 401",
    )
