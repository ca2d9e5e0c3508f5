"""Scale-out: how fast a deploy reaches every worker of another gateway.

Baseline: one gateway (2 workers) on the embedded SQLite registry; the time from
a deploy's response until both its workers serve the new version (the other
worker polls every 0.25 s). edgefn scale-out: two gateways (2 workers each,
separate data and AOT cache directories) sharing a PostgreSQL registry; the
time from a deploy through A until every worker of B serves it (LISTEN/NOTIFY,
then fetching component and compiled artifact from the database).

Two kinds of deploy: new code (a component B has never seen: 60 MB to fetch)
and a configuration change (same component, new `[env]`). Target: every
worker of B within 1 s.

    python bench/scaleout.py [--deploys 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from edgefn_platform import build  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402
from pg_cluster import Cluster  # noqa: E402

TARGET_SECONDS = 1.0


def variant(component: bytes, n: int) -> bytes:
    """The component with a custom section appended: the same code, a new sha256."""
    name, payload = b"edgefn-bench", str(n).encode()
    body = bytes([len(name)]) + name + payload
    return component + b"\x00" + bytes([len(body)]) + body


def deploy(gateway: GatewayProcess, component: bytes, release: str) -> float:
    started = time.perf_counter()
    response = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": f'name = "bench"\n[env]\nRELEASE = "{release}"\n'},
        files={"component": ("c.wasm", component)},
    )
    response.raise_for_status()
    return time.perf_counter() - started


def serves(gateway: GatewayProcess, release: str) -> bool:
    """Ten requests on new connections (the kernel spreads them over the workers)."""
    for _ in range(10):
        response = gateway.get("/bench/env", headers={"connection": "close"})
        if response.status_code != 200 or response.json().get("RELEASE") != release:
            return False
    return True


def until_served(gateway: GatewayProcess, release: str, timeout: float = 30) -> float:
    started = time.perf_counter()
    while not serves(gateway, release):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"release {release} not served within {timeout} s")
    return time.perf_counter() - started


@contextmanager
def gateways(root: Path, url: str | None) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """(deploy through, measured on): the same gateway without a database URL."""
    root.mkdir()
    a = GatewayProcess(root / "a", workers=2, database_url=url).start()
    b = a
    if url:
        cache = {"EDGEFN_CACHE_DIR": str(root / "b-cache")}
        b = GatewayProcess(root / "b", workers=2, database_url=url, extra_env=cache).start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def measure(
    root: Path, url: str | None, component: bytes, deploys: int, salt: int
) -> dict[str, list[float]]:
    """`salt` keeps each run's components new to the shared AOT cache."""
    times: dict[str, list[float]] = {"new code": [], "config change": [], "deploy call": []}
    with gateways(root, url) as (a, b):
        deploy(a, component, "warm")
        until_served(b, "warm")
        for n in range(deploys):
            code = variant(component, salt + n)
            times["deploy call"].append(deploy(a, code, f"code-{n}"))
            times["new code"].append(until_served(b, f"code-{n}"))
            deploy(a, code, f"config-{n}")
            times["config change"].append(until_served(b, f"config-{n}"))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    component = build(ROOT / "tests" / "functions" / "hostile").path.read_bytes()
    cluster = Cluster().init()
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as temp:
            root = Path(temp)
            salt = time.time_ns()
            baseline = measure(root / "sqlite", None, component, args.deploys, salt)
            shared = measure(root / "pg", cluster.database(), component, args.deploys, salt + 1000)
    finally:
        cluster.remove()
    print(f"\n{args.deploys} deploys of each kind; seconds until every worker serves it")
    print(f"{'':16}{'baseline: 1 gateway, SQLite':>30}{'edgefn: A -> B, PostgreSQL':>30}")
    met = True
    for kind in ("new code", "config change", "deploy call"):
        row = []
        for times in (baseline, shared):
            row.append(f"p50 {statistics.median(times[kind]):.2f}  max {max(times[kind]):.2f}")
        print(f"{kind:16}{row[0]:>30}{row[1]:>30}")
        if kind != "deploy call":
            met &= max(shared[kind]) <= TARGET_SECONDS
    for kind in ("new code", "config change"):
        ratio = statistics.median(shared[kind]) / statistics.median(baseline[kind])
        print(f"{kind}: {ratio:.2f}x the single gateway's median")
    verdict = "met" if met else "NOT MET"
    print(f"target: every worker of B within {TARGET_SECONDS:.0f} s of the deploy: {verdict}")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
