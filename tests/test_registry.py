"""The SQLite registry: versions, activation, routes, deletion, logs."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from edgefn_platform.gateway import GatewayConfig, load_token
from edgefn_platform.registry import (
    FunctionNotFound,
    RouteConflict,
    SQLiteRegistry,
    VersionNotFound,
)
from edgefn_platform.registry._sqlite import LOG_LINES_KEPT


@pytest.fixture()
def registry(tmp_path: Path) -> SQLiteRegistry:
    return SQLiteRegistry(tmp_path / "data")


def component(tmp_path: Path, content: bytes) -> tuple[Path, str]:
    path = tmp_path / f"{hashlib.sha256(content).hexdigest()[:8]}.wasm"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def deploy(
    registry: SQLiteRegistry, tmp_path: Path, name: str, content: bytes, route: str | None = None
) -> int:
    path, sha = component(tmp_path, content)
    record = registry.deploy(name, route or f"/{name}", {"name": name}, path, sha)
    return record.version


def test_versions_are_numbered_per_function_and_the_latest_is_active(
    registry: SQLiteRegistry, tmp_path: Path
) -> None:
    assert deploy(registry, tmp_path, "a", b"one") == 1
    assert deploy(registry, tmp_path, "a", b"two") == 2
    assert deploy(registry, tmp_path, "b", b"three") == 1
    assert registry.function("a").active.version == 2
    assert [v.version for v in registry.versions("a")] == [1, 2]
    assert registry.artifact_path(registry.function("a").active.sha256).read_bytes() == b"two"


def test_activate_rolls_back_and_forward(registry: SQLiteRegistry, tmp_path: Path) -> None:
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
    registry: SQLiteRegistry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one", route="/shared")
    with pytest.raises(RouteConflict, match="already served by function 'a'"):
        deploy(registry, tmp_path, "b", b"two", route="/shared")
    with pytest.raises(FunctionNotFound):
        registry.function("b")


def test_delete_removes_the_function_and_unused_artifacts(
    registry: SQLiteRegistry, tmp_path: Path
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


def test_logs_keep_the_newest_lines(registry: SQLiteRegistry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    registry.append_logs(
        ("a", float(i), f"r{i}", "log", f"line {i}") for i in range(LOG_LINES_KEPT + 50)
    )
    kept = registry.logs("a", limit=1000)
    assert len(kept) == LOG_LINES_KEPT
    assert kept[-1].line == f"line {LOG_LINES_KEPT + 49}"
    assert [r.line for r in registry.logs("a", after=kept[-2].id)] == [kept[-1].line]


def test_a_second_process_sees_the_same_registry(registry: SQLiteRegistry, tmp_path: Path) -> None:
    other = SQLiteRegistry(registry.data_dir)
    token = other.change_token()
    deploy(registry, tmp_path, "a", b"one")
    assert other.change_token() != token
    assert other.function("a").active.version == 1


def test_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path / "data")
    token = load_token(config)
    path = tmp_path / "data" / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 32 and load_token(config) == token
    assert load_token(GatewayConfig(data_dir=tmp_path / "data", token="given")) == "given"
