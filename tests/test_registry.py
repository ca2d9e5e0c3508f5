"""The registry, on both backends: versions, activation, routes, deletion, logs,
its schema's migrations, a full disk and its errors.

Every test taking `registry` or `database` runs against the embedded SQLite
registry and against PostgreSQL (a new database on the session's own server).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from edgefn_platform.gateway import GatewayConfig, load_token
from edgefn_platform.registry import (
    CorruptArtifact,
    FunctionNotFound,
    InvalidPrefix,
    Registry,
    RegistryError,
    RegistryUnavailable,
    RouteConflict,
    StorageFull,
    VersionNotFound,
    open_registry,
)
from edgefn_platform.registry._model import LOG_LINES_KEPT, PREFIX_MAX_LENGTH, PURGES_KEPT
from edgefn_platform.registry._sql import SCHEMA_VERSION
from edgefn_runtime import EdgefnError
from pg_cluster import Cluster

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


def test_a_purge_is_recorded_with_its_time_and_announced(
    registry: Registry, opener: Opener, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one")
    deploy(registry, tmp_path, "b", b"two")
    other = opener("b")
    other.wait_for_change(0.01)  # starts listening, where there is anything to listen to
    assert registry.purges() == {}
    token = other.change_token()
    before = time.time()
    at = registry.purge("a", "/img/")
    assert before <= at <= time.time()
    assert other.wait_for_change(0.5)
    assert other.change_token() != token
    assert other.purges() == {"a": [("/img/", at)]}
    again = registry.purge("a", "/img/")  # the same prefix: one row, the newer time
    later = registry.purge("a")
    assert registry.purges() == {"a": [("/", later)]}  # a purge of "/" covers the others
    assert again <= later
    assert registry.purge("b", "/x") > 0 and set(registry.purges()) == {"a", "b"}


def test_a_purge_of_an_unknown_function_or_a_bad_prefix_changes_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    deploy(registry, tmp_path, "a", b"one")
    token = registry.change_token()
    with pytest.raises(FunctionNotFound):
        registry.purge("zz")
    bad = ["img/", "", "/a?w=1", "/a\nb", "/\x00", "/\x7f", "/" + "x" * PREFIX_MAX_LENGTH]
    for prefix in bad:
        with pytest.raises(InvalidPrefix) as caught:
            registry.purge("a", prefix)
        assert (caught.value.status, caught.value.code) == (400, "invalid_prefix")
    assert registry.purge("a", "/" + "x" * (PREFIX_MAX_LENGTH - 1)) > 0
    assert registry.change_token() == token + 1


def test_purges_are_bounded_per_function_and_go_with_it(registry: Registry, tmp_path: Path) -> None:
    deploy(registry, tmp_path, "a", b"one")
    deploy(registry, tmp_path, "b", b"two")
    registry.purge("b", "/kept")
    times = [registry.purge("a", f"/p{i}") for i in range(PURGES_KEPT)]
    assert len(registry.purges()["a"]) == PURGES_KEPT
    newest = registry.purge("a", "/one-more")
    assert newest >= times[-1]
    assert registry.purges()["a"] == [("/", newest)]  # covers every purge before it
    registry.delete("a")
    assert list(registry.purges()) == ["b"]


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


def test_a_component_the_registry_lacks_is_its_fault_not_the_callers(
    registry: Registry,
) -> None:
    with pytest.raises(CorruptArtifact, match="no component with sha256") as missing:
        registry.artifact_path("0" * 64)
    assert (missing.value.status, missing.value.code) == (500, "corrupt_artifact")


def test_admin_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    config = GatewayConfig(data_dir=tmp_path / "data")
    token = load_token(config)
    path = tmp_path / "data" / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 32 and load_token(config) == token
    assert load_token(GatewayConfig(data_dir=tmp_path / "data", token="given")) == "given"


# -- schema and migrations -----------------------------------------------------

# The schemas of the releases before migrations were shared, copied word for word
# (SQLite's `_SCHEMA`, PostgreSQL's two migrations): the databases they left must open.
BEFORE_SQLITE = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    route TEXT NOT NULL UNIQUE,
    active_version INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    route TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    function TEXT NOT NULL,
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_function ON logs (function, id);
CREATE TABLE IF NOT EXISTS overrides (
    function TEXT PRIMARY KEY,
    limits TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', 0);
UPDATE meta SET value = 41 WHERE key = 'generation';
"""
BEFORE_POSTGRES = """
CREATE TABLE edgefn_schema (version INTEGER NOT NULL);
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    route TEXT NOT NULL UNIQUE,
    active_version BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE versions (
    function TEXT NOT NULL,
    version BIGINT NOT NULL,
    route TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    manifest JSONB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, version)
);
CREATE TABLE overrides (function TEXT PRIMARY KEY, limits JSONB NOT NULL);
CREATE TABLE logs (
    id BIGSERIAL PRIMARY KEY,
    function TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX logs_by_function ON logs (function, id);
CREATE TABLE blobs (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE TABLE generation (value BIGINT NOT NULL);
INSERT INTO generation VALUES (0);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
INSERT INTO edgefn_schema VALUES (1), (2);
UPDATE generation SET value = 41;
"""
# What a gateway of that release had stored, in SQL both backends take.
KEPT = """
INSERT INTO functions VALUES ('kept', '/kept', 1, 5.0);
INSERT INTO versions VALUES ('kept', 1, '/kept', 'ab', 3, '{"name": "kept"}', 4.0);
INSERT INTO overrides VALUES ('kept', '{"timeout": 2.0}');
INSERT INTO logs (function, time, request_id, kind, line) VALUES ('kept', 6.0, 'r1', 'log', 'hi');
"""


@dataclass
class Database:
    """A backend's database, also reachable without the registry (as an older
    gateway or an operator would reach it)."""

    backend: str
    url: str | None
    data_dir: Path

    def open(self) -> Registry:
        return open_registry(self.url, self.data_dir)

    def script(self, sql: str) -> None:
        if self.url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.data_dir / "registry.sqlite3") as db:
                db.executescript(sql)
            db.close()
        else:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.encode())

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url is None:
            with sqlite3.connect(self.data_dir / "registry.sqlite3") as db:
                found = [tuple(row) for row in db.execute(sql)]
            db.close()
            return found
        with psycopg.connect(self.url) as conn:
            return [tuple(row) for row in conn.execute(sql.encode())]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    url = request.getfixturevalue("database_url") if request.param == "postgres" else None
    return Database(request.param, url, tmp_path / "data")


def test_a_new_registry_is_created_at_the_latest_schema_version_once(
    database: Database,
) -> None:
    database.open().close()
    database.open().close()  # another worker: nothing left to migrate
    versions = database.rows("SELECT version FROM edgefn_schema ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_registry_of_the_schema_before_migrations_is_upgraded_and_keeps_its_data(
    database: Database, tmp_path: Path
) -> None:
    database.script(BEFORE_SQLITE if database.backend == "sqlite" else BEFORE_POSTGRES)
    database.script(KEPT)
    registry = database.open()
    try:
        kept = registry.function("kept")
        assert (kept.route, kept.active.version, kept.versions) == ("/kept", 1, 1)
        assert kept.active.manifest == {"name": "kept"} and kept.active.sha256 == "ab"
        assert kept.overrides == {"timeout": 2.0}
        assert [(r.request_id, r.line) for r in registry.logs("kept")] == [("r1", "hi")]
        assert registry.change_token() == 41  # a reader's token from before stays valid
        assert deploy(registry, tmp_path, "kept", b"new") == 2
        assert registry.change_token() == 42
        registry.append_logs([("kept", 7.0, "r2", "log", "again")])
        assert [r.line for r in registry.logs("kept")] == ["hi", "again"]
        purged_at = registry.purge("kept")
        assert registry.purges() == {"kept": [("/", purged_at)]}
    finally:
        registry.close()
    versions = database.rows("SELECT version FROM edgefn_schema ORDER BY version")
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    if database.backend == "sqlite":
        tables = database.rows("SELECT name FROM sqlite_master WHERE name = 'meta'")
        assert tables == []  # its counter moved to `generation`


def test_a_registry_newer_than_the_gateway_is_refused(database: Database) -> None:
    database.open().close()
    database.script(f"INSERT INTO edgefn_schema VALUES ({SCHEMA_VERSION + 1})")
    with pytest.raises(RegistryError, match="newer than this gateway knows.*upgrade"):
        database.open()


# -- a full disk -----------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts small tmpfs file systems: `tmpfs("1m")`, or `tmpfs("1m", under=folder)`
    (CI runs as root)."""
    mounted: list[Path] = []

    def mount(size: str, under: Path = tmp_path) -> Path:
        target = under / f"tmpfs-{uuid.uuid4().hex[:8]}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
            capture_output=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)
        target.rmdir()


def test_sqlite_raises_storage_full_itself_and_recovers_when_space_is_freed(
    tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    registry = open_registry(None, tmpfs("1m") / "data")
    try:
        deploy(registry, tmp_path, "a", b"small")
        with pytest.raises(StorageFull, match="full; nothing was stored"):
            deploy(registry, tmp_path, "a", os.urandom(2 << 20))  # the component: ENOSPC
        assert [v.version for v in registry.versions("a")] == [1]
        lines = [("a", 1.0, "r", "log", "x" * 1000)] * 200
        with pytest.raises(StorageFull):  # the database itself: SQLITE_FULL
            registry.append_logs(lines)
        assert registry.sweep()  # the half-written component, which filled the disk
        registry.append_logs(lines)
        assert deploy(registry, tmp_path, "a", b"bigger") == 2
    finally:
        registry.close()


def test_postgres_raises_storage_full_itself(
    tmpfs: Callable[..., Path], postgres: Cluster, database_url: str, tmp_path: Path
) -> None:
    # A tablespace on a small file system, for the table of blobs: where the server's
    # user (`nobody` under root) may reach it.
    space = tmpfs("1m", under=postgres.root)
    shutil.chown(space, postgres.root.owner())
    registry = open_registry(database_url, tmp_path / "data")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small LOCATION '{space}'".encode())
        conn.execute(b"ALTER TABLE blobs SET TABLESPACE small")
    try:
        with pytest.raises(StorageFull, match="full; nothing was stored"):
            deploy(registry, tmp_path, "a", os.urandom(2 << 20))
        assert registry.functions() == []
    finally:
        registry.close()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(b"ALTER TABLE blobs SET TABLESPACE pg_default")
            conn.execute(b"DROP TABLESPACE small")


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RegistryError("refused"), 400, "registry_error"),
        (FunctionNotFound("f"), 404, "function_not_found"),
        (VersionNotFound("f", 2), 404, "version_not_found"),
        (RouteConflict("/f", "g"), 409, "route_conflict"),
        (RegistryUnavailable("gone"), 503, "registry_unavailable"),
        (StorageFull(), 507, "insufficient_storage"),
        # A corrupted or missing artifact is the server's fault, never the caller's.
        (CorruptArtifact("sha256 mismatch"), 500, "corrupt_artifact"),
    ],
)
def test_registry_errors_are_edgefn_errors_with_their_status_and_code(
    error: RegistryError, status: int, code: str
) -> None:
    assert isinstance(error, EdgefnError)
    assert (error.status, error.code) == (status, code)
