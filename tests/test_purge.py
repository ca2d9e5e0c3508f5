"""`edgefn purge` and `POST /v1/functions/{name}/purge`: what they answer and refuse,
how a purge reaches every worker (`FunctionTable`'s `on_purges`), and that what it
covers runs again on every worker of every gateway sharing the registry
(tests/functions/cached says in each body when it ran)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

import attacks
from edgefn_platform.gateway._deploy import Deployer
from edgefn_platform.gateway._functions import FunctionTable
from edgefn_platform.gateway._metrics import Metrics
from edgefn_platform.gateway._rollout import ServingBoard, WorkerState
from edgefn_platform.registry import open_registry
from gateway_process import ROOT, GatewayProcess, cli, deploy_as
from pg_cluster import Cluster
from waiting import wait_until

pytestmark = pytest.mark.wasm

AREA = "Purge (tests/test_purge.py)"
CACHED = ROOT / "tests" / "functions" / "cached"
NAME = "purge-probe"
# Requests on new connections, which the kernel spreads over a gateway's two
# workers (SO_REUSEPORT): each worker is missed with probability 2^-FRESH.
FRESH = 16


def deploy(gateway: GatewayProcess) -> None:
    """tests/functions/cached as NAME (every answer `public, max-age=60` by default)."""
    deploy_as(gateway, CACHED, NAME)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Two workers on the embedded registry, serving NAME."""
    with GatewayProcess(tmp_path_factory.mktemp("purge") / "data", workers=2) as process:
        deploy(process)
        yield process


_unique = iter(range(10**9))


def target(path: str) -> str:
    """`path` of NAME with a query of its own: no other test has cached it."""
    return f"/{NAME}{path}?k={time.time_ns()}-{next(_unique)}"


def fresh(gateway: GatewayProcess, url: str, count: int = FRESH) -> list[tuple[str, str]]:
    """(X-Edgefn-Cache, body) of `count` GETs of `url`, each on a new connection."""
    answers = []
    # No connection kept: each request opens its own (cheaper than a client each).
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=gateway.public_url, timeout=30, limits=no_reuse) as client:
        for _ in range(count):
            response = client.get(url)
            assert response.status_code == 200, response.text
            answers.append((response.headers.get("x-edgefn-cache", ""), response.text))
    return answers


def cached_everywhere(gateway: GatewayProcess, url: str) -> set[str]:
    """Run the function for `url`; the bodies the workers answer it with once each
    answers it from its cache (one body, or one per worker without the disk tier
    they share)."""
    first = gateway.get(url)
    assert first.headers["x-edgefn-cache"] == "MISS", first.headers
    bodies = {first.text}

    def everywhere() -> bool:
        answers = fresh(gateway, url)
        bodies.update(body for _, body in answers)
        return {status for status, _ in answers} == {"HIT"}

    wait_until(everywhere, timeout=10, message=f"every worker to answer {url} from its cache")
    assert len(bodies) <= 2, bodies  # at most one run per worker
    return bodies


def ran_again(answers: list[tuple[str, str]], old: set[str]) -> bool:
    """The function ran for the first of `answers` and none is an `old` body."""
    return answers[0][0] == "MISS" and not {body for _, body in answers} & old


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
    if reason in ("control character", "longer than 1024 characters"):
        shown = {"/a\r\nX-Injected: 1": "CRLF", "/\x00": "NUL"}.get(prefix, "1025 characters")
        attacks.record(AREA, f"a purge prefix with {shown}", "400 `invalid_prefix`, nothing stored")


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
    attacks.record(
        AREA,
        f"a purge {'with a wrong' if token else 'without the'} admin token (cache busting)",
        "401 `unauthorized`, nothing purged",
    )


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


# -- what a purge covers, on every worker ----------------------------------------


def test_purge_runs_the_function_again_on_every_worker(gateway: GatewayProcess) -> None:
    url = target("/a/page")
    old = cached_everywhere(gateway, url)
    result = cli(gateway, "purge", NAME)
    assert result.exit_code == 0, result.output
    # Right when it returns: no worker answers the purged response any more.
    answers = fresh(gateway, url)
    assert ran_again(answers, old), answers
    # The new runs are cached in their turn.
    assert cached_everywhere(gateway, target("/a/page")) and fresh(gateway, url)[-1][0] == "HIT"


def test_purge_with_a_prefix_keeps_what_is_outside_it(gateway: GatewayProcess) -> None:
    inside, outside, sibling = target("/img/a.jpg"), target("/txt/a"), target("/imgx")
    old_inside = cached_everywhere(gateway, inside)
    old_outside = cached_everywhere(gateway, outside)
    old_sibling = cached_everywhere(gateway, sibling)
    result = cli(gateway, "purge", NAME, "--prefix", "/img/")
    assert result.exit_code == 0, result.output
    answers = fresh(gateway, inside)
    assert ran_again(answers, old_inside), answers
    for url, old in ((outside, old_outside), (sibling, old_sibling)):
        answers = fresh(gateway, url)
        assert {status for status, _ in answers} == {"HIT"} and {b for _, b in answers} <= old


@pytest.fixture(scope="module")
def pair(
    postgres: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways of two workers each, sharing one PostgreSQL registry, serving NAME."""
    root, url = tmp_path_factory.mktemp("purge-pair"), postgres.database()
    with (
        GatewayProcess(root / "a", workers=2, database_url=url) as a,
        GatewayProcess(root / "b", workers=2, database_url=url) as b,
    ):
        deploy(a)
        b.wait_serving(NAME)
        yield a, b


def test_a_purge_through_one_gateway_reaches_the_others_within_a_second(
    pair: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = pair
    url = target("/shared/page")
    old_a, old_b = cached_everywhere(a, url), cached_everywhere(b, url)
    sent = time.monotonic()
    response = a.admin("POST", f"/v1/functions/{NAME}/purge", json={"prefix": "/shared/"})
    assert response.status_code == 200, response.text
    returned = time.monotonic()
    # The registry generation of the purge: A's workers all serve it (or a later one).
    generation = min(w.generation for w in ServingBoard(a.data_dir / "workers").workers())
    b_board = ServingBoard(b.data_dir / "workers")

    def b_applied() -> bool:
        states = b_board.workers()
        return len(states) == b.workers and all(w.generation >= generation for w in states)

    # Each of B's workers hands the purges to its cache before it reports the generation.
    wait_until(b_applied, timeout=10, message="B's workers to apply the purge")
    applied = time.monotonic()
    print(
        f"A answered the purge in {returned - sent:.3f} s; every worker of B applied it "
        f"{applied - sent:.3f} s after it was sent ({applied - returned:.3f} s after A answered)"
    )
    assert applied - sent < 1.0
    assert ran_again(fresh(a, url), old_a)
    assert not {body for _, body in fresh(b, url)} & old_b


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
