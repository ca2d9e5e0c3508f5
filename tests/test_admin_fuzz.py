"""The admin API fuzzed from its own OpenAPI document (schemathesis): with and
without the token, no operation answers 500 and every response matches the
schema. Bounded here; `make fuzz` runs many more examples."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from prometheus_client import values as prometheus_values
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


class _DocumentOnly:
    """A stand-in worker with only what `AdminApp` reads when it is built: enough for
    the app to serve its OpenAPI document (generated from its routes alone)."""

    registry = deployer = table = metrics = board = kv = secrets = None
    config = GatewayConfig(data_dir=Path("/nonexistent"), workers=1, token=TOKEN)


# schemathesis reads the schema when pytest collects this module (its fixture-based
# loader does not work with pytest 9): from an app on a stand-in worker, so that
# collecting opens nothing; the requests go to `admin_app`, a real one.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    AdminApp(_DocumentOnly(), TOKEN, Lifecycle(None)),  # type: ignore[arg-type]
    headers={"authorization": f"Bearer {TOKEN}"},
)


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starlette]:
    """The admin API, served by one worker in this process (a change is live once
    its own table has it)."""
    config = GatewayConfig(
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        workers=1,
        token=TOKEN,
        # A secrets key, so that a set is fuzzed through to the registry (without
        # one, every set answers 503 `no_secrets_key`).
        secrets_key=Fernet.generate_key().decode(),
        cache_dir=ROOT / ".cache" / "edgefn",
    )
    # The worker's metrics set PROMETHEUS_MULTIPROC_DIR (and prometheus_client's
    # value class) for this process: undone afterwards, so no later test or the
    # gateways it starts inherit this module's metrics directory.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        patch.setattr(prometheus_values, "ValueClass", prometheus_values.ValueClass)
        worker = Worker.open(config)
        try:
            yield AdminApp(worker, TOKEN, Lifecycle(worker.table))
        finally:
            worker.close()


@pytest.fixture(scope="module")
def calls(request: pytest.FixtureRequest) -> Iterator[dict[str, int]]:
    """Requests sent, by operation; recorded in the attack table once the module's
    fuzzing is done, when none of it failed."""
    counted: dict[str, int] = {}
    failed_before = request.session.testsfailed
    yield counted
    if counted and request.session.testsfailed == failed_before:
        attacks.record(
            AREA,
            f"schemathesis: {sum(counted.values())} generated requests over "
            f"{len(counted)} operations",
            "no 5xx; every response matched the OpenAPI schema; without the token, 401",
        )


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_fails_or_breaks_its_schema(
    case: Case, admin_app: Starlette, calls: dict[str, int]
) -> None:
    # Half the cases carry the token, so the fuzzer reaches past authentication.
    authorized = hash(repr(case.path_parameters) + repr(case.query)) % 2 == 0
    headers = {"authorization": f"Bearer {TOKEN}"} if authorized else {}
    # Limits and manifests have rules JSON Schema cannot state ("at least 16MiB"),
    # so schema-valid data may rightly get a 400. Without the token, 401 comes
    # before the 405 for a method the path lacks.
    excluded = [positive_data_acceptance] + ([] if authorized else [unsupported_method])
    response = case.call_and_validate(app=admin_app, headers=headers, excluded_checks=excluded)
    assert response.status_code < 500, response.text
    if not authorized and case.path not in ("/healthz", "/readyz"):
        assert response.status_code == 401
    key = f"{case.method} {case.path}"
    calls[key] = calls.get(key, 0) + 1
