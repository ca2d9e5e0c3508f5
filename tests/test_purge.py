"""`edgefn purge` and `POST /v1/functions/{name}/purge`: what they answer and refuse,
and how the purge reaches every worker (`FunctionTable`'s `on_purges`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from edgefn_platform import build
from edgefn_platform.gateway._deploy import Deployer
from edgefn_platform.gateway._functions import FunctionTable
from edgefn_platform.gateway._metrics import Metrics
from edgefn_platform.gateway._rollout import ServingBoard, WorkerState
from edgefn_platform.registry import open_registry
from gateway_process import ROOT, GatewayProcess, cli

HELLO = ROOT / "functions" / "hello"
NAME = "purge-probe"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two workers on the embedded registry, serving NAME (hello)."""
    component = build(HELLO).path.read_bytes()
    process = GatewayProcess(tmp_path_factory.mktemp("purge") / "data", workers=2).start()
    try:
        response = process.admin(
            "POST",
            "/v1/functions",
            data={"manifest": f'name = "{NAME}"\n'},
            files={"component": ("c.wasm", component)},
        )
        assert response.status_code == 201, response.text
        yield process
    finally:
        process.stop()


def purges(gateway: GatewayProcess) -> list[tuple[str, float]]:
    """NAME's purges as the gateway's registry holds them."""
    registry = open_registry(None, gateway.data_dir)
    try:
        return registry.purges().get(NAME, [])
    finally:
        registry.close()


def purge(gateway: GatewayProcess, body: Any = None, **kwargs: Any) -> httpx.Response:
    return gateway.admin("POST", f"/v1/functions/{NAME}/purge", json=body, **kwargs)


# -- the admin API ---------------------------------------------------------------


def test_a_purge_answers_once_every_worker_applies_it(gateway: GatewayProcess) -> None:
    response = purge(gateway, {"prefix": "/img/"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["function"], answer["prefix"]) == (NAME, "/img/")
    assert ("/img/", answer["purged_at"]) in purges(gateway)
    # Every worker reported the generation after the purge: it has applied it.
    assert len(answer["workers"]) == 2
    assert all(worker["version"] == 1 for worker in answer["workers"])


def test_a_purge_without_a_body_purges_everything(gateway: GatewayProcess) -> None:
    response = gateway.admin("POST", f"/v1/functions/{NAME}/purge")
    assert response.status_code == 200, response.text
    assert response.json()["prefix"] == "/"
    assert purges(gateway) == [("/", response.json()["purged_at"])]


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("img/", 'starts with "/"'),
        ("", 'starts with "/"'),
        ("/img?w=800", "the query is not part of it"),
        ("/a\r\nX-Injected: 1", "control character"),
        ("/\x00", "control character"),
        ("/" + "x" * 1024, "longer than 1024 characters"),
    ],
    ids=["relative", "empty", "query", "crlf", "nul", "too-long"],
)
def test_a_bad_prefix_is_refused_with_400_saying_why(
    gateway: GatewayProcess, prefix: str, reason: str
) -> None:
    before = purges(gateway)
    response = purge(gateway, {"prefix": prefix})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_prefix"
    assert error["message"].startswith("cannot purge prefix ") and reason in error["message"]
    assert purges(gateway) == before


def test_a_prefix_that_is_not_a_string_is_an_invalid_request(gateway: GatewayProcess) -> None:
    response = purge(gateway, {"prefix": 7})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "prefix" in error["message"]


def test_purging_an_unknown_function_is_404(gateway: GatewayProcess) -> None:
    response = gateway.admin("POST", "/v1/functions/nobody/purge", json={"prefix": "/"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "function_not_found"


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_purge_needs_the_admin_token(gateway: GatewayProcess, token: str | None) -> None:
    before = purges(gateway)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(
        f"{gateway.admin_url}/v1/functions/{NAME}/purge", json={"prefix": "/"}, headers=headers
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert purges(gateway) == before


# -- the CLI ---------------------------------------------------------------------


def test_edgefn_purge_says_what_it_purged_and_where_it_is_live(gateway: GatewayProcess) -> None:
    result = cli(gateway, "purge", NAME)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Purged every cached response of {NAME}, live on 2 workers\n"
    result = cli(gateway, "purge", NAME, "--prefix", "/img/")
    assert result.exit_code == 0, result.output
    said = f"Purged the cached responses under /img/ of {NAME}, live on 2 workers\n"
    assert result.stdout == said
    assert [prefix for prefix, _ in purges(gateway)] == ["/", "/img/"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["nobody"], "(function_not_found, HTTP 404)"),
        ([NAME, "--prefix", "img"], "(invalid_prefix, HTTP 400)"),
    ],
    ids=["unknown", "bad-prefix"],
)
def test_edgefn_purge_refused_exits_1_in_one_line(
    gateway: GatewayProcess, args: list[str], code: str
) -> None:
    result = cli(gateway, "purge", *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert result.stderr.rstrip().endswith(code), result.stderr


# -- the worker's table ----------------------------------------------------------


class _Registry:
    """What `FunctionTable.refresh` reads of a registry with no functions."""

    def __init__(self) -> None:
        self.token = 1
        self.purged: dict[str, list[tuple[str, float]]] = {"a": [("/", 1.0)]}

    def change_token(self) -> int:
        return self.token

    def functions(self) -> list[Any]:
        return []

    def purges(self) -> dict[str, list[tuple[str, float]]]:
        return self.purged


def test_the_table_applies_purges_before_it_reports_the_generation(tmp_path: Path) -> None:
    registry, board = _Registry(), ServingBoard(tmp_path / "workers")
    told: list[tuple[dict[str, list[tuple[str, float]]], list[WorkerState]]] = []
    deployer = cast(Deployer, SimpleNamespace(registry=registry, engine=None))
    table = FunctionTable(
        deployer,
        cast(Metrics, None),  # no function: no metric is touched
        board,
        on_purges=lambda purged: told.append((purged, board.workers())),
    )
    assert table.refresh() == 1
    assert told == [({"a": [("/", 1.0)]}, [])]  # before the first report
    assert [w.generation for w in board.workers()] == [1]
    table.refresh()
    assert len(told) == 1  # the registry did not change: nothing to apply
    registry.token, registry.purged = 2, {"a": [("/", 1.0)], "b": [("/img/", 2.0)]}
    assert table.refresh() == 2
    purged, reported = told[-1]
    assert purged == registry.purged and [w.generation for w in reported] == [1]
