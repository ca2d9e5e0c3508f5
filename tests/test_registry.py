"""The registry, on both backends: versions, activation, routes, deletion, logs.

Every test taking `registry` runs against the embedded SQLite registry and
against PostgreSQL (a new database on the session's own server).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgefn_platform.gateway import GatewayConfig, load_token
from edgefn_platform.registry import (
    FunctionNotFound,
    Registry,
    RouteConflict,
    VersionNotFound,
    open_registry,
)
from edgefn_platform.registry._model import LOG_LINES_KEPT

Opener = Callable[[str], Registry]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the registry as another gateway would: `opener("b")` with its own data dir
    (for SQLite, the same directory: its workers share one)."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").database()
    opened: list[Registry] = []

    def open_as(node: str) -> Registry:
        data_dir = tmp_path / (node if url else "data")
        opened.append(open_registry(url, data_dir))
        return opened[-1]

    yield open_as
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(opener: Opener) -> Registry:
    return opener("a")


def component(tmp_path: Path, content: bytes) -> tuple[Path, str]:
    path = tmp_path / f"{hashlib.sha256(content).hexdigest()[:8]}.wasm"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def deploy(
    registry: Registry, tmp_path: Path, name: str, content: bytes, route: str | None = None
) -> int:
    path, sha = component(tmp_path, content)
    record = registry.deploy(name, route or f"/{name}", {"name": name}, path, sha)
    return record.version


def test_versions_are_numbered_per_function_and_the_latest_is_active(
    registry: Registry, tmp_path: Path
) -> None:
    assert deploy(registry, tmp_path, "a", b"one") == 1
    assert deploy(registry, tmp_path, "a", b"two") == 2
    assert deploy(registry, tmp_path, "b", b"three") == 1
    assert registry.function("a").active.version == 2
    assert [v.version for v in registry.versions("a")] == [1, 2]
    assert registry.artifact_path(registry.function("a").active.sha256).read_bytes() == b"two"


def test_activate_rolls_back_and_forward(registry: Registry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    deploy(registry, tmp_path, "a", b"two")
    token = registry.change_token()
    assert registry.activate("a", 1).active.version == 1
    assert registry.change_token() != token
    with pytest.raises(VersionNotFound):
        registry.activate("a", 9)
    with pytest.raises(FunctionNotFound):
        registry.activate("zz", 1)


def test_a_taken_route_is_a_conflict_and_nothing_is_stored(
    registry: Registry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one", route="/shared")
    with pytest.raises(RouteConflict, match="already served by function 'a'"):
        deploy(registry, tmp_path, "b", b"two", route="/shared")
    with pytest.raises(FunctionNotFound):
        registry.function("b")


def test_delete_removes_the_function_and_unused_artifacts(
    registry: Registry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"shared")
    deploy(registry, tmp_path, "a", b"only-a")
    deploy(registry, tmp_path, "b", b"shared")
    removed = registry.delete("a")
    assert removed == [hashlib.sha256(b"only-a").hexdigest()]
    assert registry.artifact_path(hashlib.sha256(b"shared").hexdigest()).exists()
    assert [f.name for f in registry.functions()] == ["b"]
    with pytest.raises(FunctionNotFound):
        registry.delete("a")


def test_logs_keep_the_newest_lines(registry: Registry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    registry.append_logs(
        ("a", float(i), f"r{i}", "log", f"line {i}") for i in range(LOG_LINES_KEPT + 50)
    )
    kept = registry.logs("a", limit=1000)
    assert len(kept) == LOG_LINES_KEPT
    assert kept[-1].line == f"line {LOG_LINES_KEPT + 49}"
    assert [r.line for r in registry.logs("a", after=kept[-2].id)] == [kept[-1].line]


def test_logs_of_one_request(registry: Registry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    deploy(registry, tmp_path, "b", b"two")
    registry.append_logs(
        [("a", 1.0, "r1", "log", "one"), ("a", 2.0, "r2", "log", "two")]
        + [("b", 3.0, "r1", "log", "other function"), ("a", 4.0, "r1", "access", "{}")]
    )
    mine = registry.logs("a", request_id="r1")
    assert [(r.kind, r.line) for r in mine] == [("log", "one"), ("access", "{}")]
    assert [r.line for r in registry.logs("a", after=mine[0].id, request_id="r1")] == ["{}"]
    assert [r.line for r in registry.logs("a", limit=1, request_id="r1")] == ["{}"]
    assert registry.logs("a", request_id="r9") == []
    assert len(registry.logs("a")) == 3


def test_a_second_gateway_sees_the_same_registry(
    registry: Registry, opener: Opener, tmp_path: Path
) -> None:
    other = opener("b")
    token = other.change_token()
    other.wait_for_change(0.01)  # starts listening, where there is anything to listen to
    deploy(registry, tmp_path, "a", b"one")
    assert other.wait_for_change(0.5)
    assert other.change_token() != token
    assert other.function("a").active.version == 1
    # Its own copy of the component, whether a shared file or fetched and verified.
    assert other.artifact_path(registry.function("a").active.sha256).read_bytes() == b"one"


def test_limit_overrides_are_replaced_and_reset(registry: Registry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    token = registry.change_token()
    assert registry.set_overrides("a", {"timeout": 2.0}).overrides == {"timeout": 2.0}
    assert registry.change_token() != token
    assert registry.set_overrides("a", {"memory": 1 << 25}).overrides == {"memory": 1 << 25}
    assert registry.set_overrides("a", {}).overrides == {}
    with pytest.raises(FunctionNotFound):
        registry.set_overrides("zz", {"timeout": 1.0})


def test_concurrent_limit_changes_through_two_gateways_all_stick(
    registry: Registry, opener: Opener, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one")
    gateways = [registry, opener("b")]

    def change(i: int) -> None:
        gateways[i % 2].set_overrides("a", {f"limit{i}": i}, merge=True)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.function("a").overrides == {f"limit{i}": i for i in range(16)}


def test_redeploying_the_active_version_from_two_gateways_at_once_adds_one(
    registry: Registry, opener: Opener, tmp_path: Path
) -> None:
    path, sha = component(tmp_path, b"same")
    gateways = [registry, opener("b")]
    with ThreadPoolExecutor(8) as pool:
        records = list(
            pool.map(lambda i: gateways[i % 2].deploy("a", "/a", {"n": 1}, path, sha), range(8))
        )
    assert {r.version for r in records} == {1}
    assert registry.deploy("a", "/a", {"n": 2}, path, sha).version == 2  # a new manifest


def test_version_numbers_beyond_32_bits_are_just_missing(
    registry: Registry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one")
    with pytest.raises(VersionNotFound):
        registry.activate("a", 2**62)
    assert registry.logs("a", after=2**62) == []


def test_sweep_removes_only_unreferenced_local_artifacts(
    registry: Registry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one")
    kept = registry.artifact_path(hashlib.sha256(b"one").hexdigest())
    stray = kept.with_name("0" * 64 + ".wasm")
    stray.write_bytes(b"left by a crash")
    half = kept.with_name("x.123.partial")
    half.write_bytes(b"half")
    assert sorted(registry.sweep()) == sorted([stray, half])
    assert kept.read_bytes() == b"one"


def test_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path / "data")
    token = load_token(config)
    path = tmp_path / "data" / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 32 and load_token(config) == token
    assert load_token(GatewayConfig(data_dir=tmp_path / "data", token="given")) == "given"
