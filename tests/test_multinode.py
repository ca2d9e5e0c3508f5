"""Two gateways sharing one PostgreSQL registry, as two nodes behind a load balancer.

Each has its own data directory and its own AOT cache: B never compiles what A
deployed, it fetches the compiled artifact (and the assets) from the registry.
The tests share one pair of gateways; each deploys a function of its own, so none
depends on another or on their order, and the one that kills a gateway starts its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgefn_platform import BuildResult
from edgefn_platform.gateway import pack_assets
from gateway_process import GatewayProcess
from pg_cluster import Cluster
from waiting import wait_until

HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
pytestmark = pytest.mark.wasm


class Nodes:
    def __init__(
        self, a: GatewayProcess, b: GatewayProcess, build: BuildResult, root: Path, url: str
    ):
        self.a, self.b, self.build, self.root, self.url = a, b, build, root, url
        self.archive = root / "assets.tar.gz"
        pack_assets(HOSTILE / "assets", self.archive)
        # The function the test deploys (a name of its own, see `nodes`).
        self.name = "shared"

    def deploy(self, through: GatewayProcess, release: str) -> httpx.Response:
        """The hostile fixture as this test's function, its env telling the release apart."""
        manifest = f'name = "{self.name}"\n[env]\nRELEASE = "{release}"\n'
        return through.admin(
            "POST",
            "/v1/functions",
            data={"manifest": manifest},
            files={
                "component": ("c.wasm", self.build.path.read_bytes()),
                "assets": ("a.tar.gz", self.archive.read_bytes()),
            },
        )


def release(gateway: GatewayProcess, name: str) -> str | None:
    response = gateway.get(f"/{name}/env", headers={"connection": "close"})
    return response.json().get("RELEASE") if response.status_code == 200 else None


def serves(gateway: GatewayProcess, name: str, expected: str) -> bool:
    """Whether every worker serves `expected`: ten requests on new connections, which
    the kernel spreads across a gateway's workers (two here: each is missed with
    probability 2^-10)."""
    return all(release(gateway, name) == expected for _ in range(10))


def seconds_until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    wait_until(check, timeout=timeout, message=getattr(check, "__name__", "the check"))
    return time.monotonic() - started


@pytest.fixture(scope="module")
def pair(
    postgres: Cluster, hostile_build: BuildResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("nodes")
    url = postgres.database()
    with GatewayProcess(root / "a", workers=2, database_url=url) as a:
        # B's cache starts empty: what it serves, it fetched from the registry.
        b_cache = {"EDGEFN_CACHE_DIR": str(root / "bc")}
        with GatewayProcess(root / "b", workers=2, database_url=url, extra_env=b_cache) as b:
            yield Nodes(a, b, hostile_build, root, url)


@pytest.fixture
def nodes(pair: Nodes, request: pytest.FixtureRequest) -> Nodes:
    """The pair, deploying a function named after the test (no other test touches it)."""
    pair.name = request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    return pair


def test_a_deploy_through_a_is_served_by_b_within_2_seconds(nodes: Nodes) -> None:
    response = nodes.deploy(nodes.a, "1")
    assert response.status_code == 201, response.text
    took = seconds_until(lambda: serves(nodes.b, nodes.name, "1"))
    print(f"every worker of B served A's deploy {took:.2f} s after it returned")
    assert took < 2.0
    # With the assets, which B fetched too.
    read = nodes.b.get(f"/{nodes.name}/read", params={"path": "/assets/greeting.txt"}).json()
    assert "read" in read
    metrics = nodes.b.admin("GET", "/metrics").text
    assert re.search(r'edgefn_aot_cache_total\{result="hit"\} [1-9]', metrics)
    assert not re.search(r'edgefn_aot_cache_total\{result="miss"\} [1-9]', metrics)


def test_a_rollback_through_b_is_seen_by_a(nodes: Nodes) -> None:
    assert nodes.deploy(nodes.a, "1").status_code == 201
    assert nodes.deploy(nodes.a, "2").status_code == 201
    seconds_until(lambda: serves(nodes.b, nodes.name, "2"))
    rolled = nodes.b.admin("POST", f"/v1/functions/{nodes.name}/activate", json={"version": 1})
    assert rolled.status_code == 200 and rolled.json()["active"]["version"] == 1
    took = seconds_until(lambda: serves(nodes.a, nodes.name, "1"))
    print(f"every worker of A served the rollback made through B after {took:.2f} s")
    assert took < 2.0


def test_limits_changed_through_a_apply_on_b(nodes: Nodes) -> None:
    assert nodes.deploy(nodes.a, "1").status_code == 201
    seconds_until(lambda: serves(nodes.b, nodes.name, "1"))
    changed = nodes.a.admin("PATCH", f"/v1/functions/{nodes.name}/limits", json={"fuel": 100_000})
    assert changed.status_code == 200, changed.text

    def exhausted() -> bool:
        response = nodes.b.get(f"/{nodes.name}/counter", headers={"connection": "close"})
        return response.status_code == 503 and response.json()["error"]["code"] == "fuel_exhausted"

    assert seconds_until(exhausted) < 2.0
    assert nodes.a.admin("DELETE", f"/v1/functions/{nodes.name}/limits").status_code == 200
    seconds_until(lambda: nodes.b.get(f"/{nodes.name}/counter").status_code == 200)


def test_both_keep_serving_while_the_database_is_down(nodes: Nodes, postgres: Cluster) -> None:
    assert nodes.deploy(nodes.a, "1").status_code == 201
    seconds_until(lambda: serves(nodes.a, nodes.name, "1") and serves(nodes.b, nodes.name, "1"))
    postgres.stop()
    try:
        # Deploys need the registry: refused, with the reason, and admin /readyz says so.
        refused = nodes.deploy(nodes.a, "3")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "registry_unavailable"
        for node in (nodes.a, nodes.b):
            seconds_until(lambda n=node: n.admin("GET", "/readyz").status_code == 503)
            assert node.admin("GET", "/readyz").json()["status"] == "registry unavailable"
            metrics = node.admin("GET", "/metrics").text
            assert re.search(r"^edgefn_registry_available 0\.0$", metrics, re.MULTILINE)
        # Serving does not: a few seconds of traffic on both, all answered.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert release(nodes.a, nodes.name) == "1" and release(nodes.b, nodes.name) == "1"
            assert nodes.b.get("/readyz").status_code == 200
        marked = nodes.a.get(f"/{nodes.name}/env", headers={"x-request-id": "during-the-outage"})
        assert marked.status_code == 200
    finally:
        postgres.start()
    for node in (nodes.a, nodes.b):
        seconds_until(lambda n=node: n.admin("GET", "/readyz").status_code == 200)

    # The access line of a request served during the outage was kept and written after it.
    def logged() -> bool:
        path = f"/v1/functions/{nodes.name}/logs"
        lines = nodes.b.admin("GET", path, params={"limit": 1000}).json()
        return any(line["request_id"] == "during-the-outage" for line in lines)

    seconds_until(logged, timeout=15)
    assert nodes.deploy(nodes.a, "3").status_code == 201
    assert seconds_until(lambda: serves(nodes.b, nodes.name, "3")) < 2.0
    assert serves(nodes.a, nodes.name, "3")
    # Every worker of both says so.
    for node in (nodes.a, nodes.b):
        metrics = node.admin("GET", "/metrics").text
        assert re.search(r"^edgefn_registry_available 1\.0$", metrics, re.MULTILINE)
        # Release "3" is version 2 (the deploy during the outage stored nothing).
        assert list(node.serving_versions(nodes.name).values()) == [2, 2], metrics


def test_deploys_through_both_at_once_get_distinct_versions(nodes: Nodes) -> None:
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda i: nodes.deploy((nodes.a, nodes.b)[i % 2], f"c{i}"), range(4))
        )
    assert [r.status_code for r in responses] == [201] * 4
    # Serialised across gateways: no number twice, no gap; the last one wins everywhere.
    release_of = {r.json()["version"]: f"c{i}" for i, r in enumerate(responses)}
    first = min(release_of)
    assert sorted(release_of) == list(range(first, first + 4))
    latest = nodes.b.admin("GET", f"/v1/functions/{nodes.name}").json()["active"]["version"]
    assert latest == max(release_of)
    winner = release_of[latest]
    seconds_until(
        lambda: serves(nodes.a, nodes.name, winner) and serves(nodes.b, nodes.name, winner)
    )


def test_killing_a_leaves_b_unaffected(nodes: Nodes) -> None:
    # An A of this test's own, on the shared registry: the pair's A serves on.
    with GatewayProcess(nodes.root / "doomed", workers=2, database_url=nodes.url) as doomed:
        assert nodes.deploy(doomed, "1").status_code == 201
        seconds_until(lambda: serves(nodes.b, nodes.name, "1"))
        doomed.kill()
        assert serves(nodes.b, nodes.name, "1")
        assert nodes.deploy(nodes.b, "2").status_code == 201
        assert seconds_until(lambda: serves(nodes.b, nodes.name, "2")) < 2.0
