"""What only the PostgreSQL registry does: migrations, shared blobs, announcements,
and losing the database."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row

from edgefn_platform.cli import main
from edgefn_platform.registry import (
    Blob,
    CorruptArtifact,
    PostgresRegistry,
    RegistryError,
    RegistryUnavailable,
    open_registry,
)
from edgefn_platform.registry._sql import POSTGRES, SCHEMA_VERSION, migrate
from gateway_process import closed_port
from pg_cluster import Cluster


def schema_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT MAX(version) FROM edgefn_schema").fetchone()
    assert row is not None
    return int(row[0])


def test_a_new_database_is_migrated_once_by_gateways_starting_together(
    database_url: str, tmp_path: Path
) -> None:
    registries: list[PostgresRegistry] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            registries.append(PostgresRegistry(database_url, tmp_path / str(i)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(registries) == 4
    assert schema_version(database_url) == SCHEMA_VERSION
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT version FROM edgefn_schema ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    for registry in registries:
        registry.close()


def test_an_older_schema_is_migrated_forward(database_url: str, tmp_path: Path) -> None:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        with conn.transaction():
            assert migrate(conn, POSTGRES, upto=1) == 1
        conn.execute("INSERT INTO functions VALUES ('kept', '/kept', 1, 0)")
    PostgresRegistry(database_url, tmp_path).close()
    assert schema_version(database_url) == SCHEMA_VERSION
    with psycopg.connect(database_url) as conn:
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'blobs'::regclass "
            "AND attname = 'data'"
        ).fetchone()
        kept = conn.execute("SELECT name FROM functions").fetchall()
    assert storage == ("e",)  # external: components are not compressed again
    assert kept == [("kept",)]


def deploy_with_blobs(registry: PostgresRegistry, tmp_path: Path) -> str:
    component, archive = tmp_path / "c.wasm", tmp_path / "a.tar.gz"
    component.write_bytes(b"component")
    archive.write_bytes(b"assets")
    sha = hashlib.sha256(b"component").hexdigest()
    blobs = [Blob("assets/aa", archive), Blob(f"compiled/{sha}-engine", component)]
    manifest = {"name": "f", "assets_sha256": "aa"}
    registry.deploy("f", "/f", manifest, component, sha, blobs)
    return sha


def test_blobs_reach_other_gateways_verified(database_url: str, tmp_path: Path) -> None:
    a = PostgresRegistry(database_url, tmp_path / "a")
    b = PostgresRegistry(database_url, tmp_path / "b")
    sha = deploy_with_blobs(a, tmp_path)
    assert b.fetch("assets/aa", tmp_path / "got") and (tmp_path / "got").read_bytes() == b"assets"
    assert not b.fetch("assets/none", tmp_path / "none")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE blobs SET data = 'tampered' WHERE key = %s", (f"component/{sha}",))
    with pytest.raises(RegistryError, match="corrupt") as corrupt:
        b.artifact_path(sha)
    # The registry's fault, not the caller's: a server error, never a 400.
    assert isinstance(corrupt.value, CorruptArtifact)
    assert (corrupt.value.status, corrupt.value.code) == (500, "corrupt_artifact")
    assert not (tmp_path / "b" / "artifacts" / f"{sha}.wasm").exists()
    a.close()
    b.close()


def test_delete_removes_the_blobs_no_version_uses(database_url: str, tmp_path: Path) -> None:
    registry = PostgresRegistry(database_url, tmp_path / "a")
    sha = deploy_with_blobs(registry, tmp_path)
    assert registry.delete("f") == [sha]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT key FROM blobs").fetchall() == []
    registry.close()


def test_open_registry_checks_the_url(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="must start with postgresql://"):
        open_registry("mysql://db/edgefn", tmp_path)


def test_an_unreachable_database_or_unknown_user_is_reported_as_such(
    postgres: Cluster, tmp_path: Path
) -> None:
    closed = f"postgresql://edgefn@127.0.0.1:{postgres.port + 1}/nowhere"
    with pytest.raises(RegistryUnavailable) as refused:
        PostgresRegistry(closed, tmp_path)
    message = str(refused.value)
    assert "PostgreSQL at 127.0.0.1:" in message and "/nowhere" in message
    assert "refused" in message
    ghost = postgres.url().replace("edgefn@", "ghost@")
    with pytest.raises(RegistryUnavailable, match='role "ghost" does not exist'):
        PostgresRegistry(ghost, tmp_path)


def test_losing_the_database_mid_run_is_unavailable_then_recovers(
    postgres: Cluster, database_url: str, tmp_path: Path
) -> None:
    registry = PostgresRegistry(database_url, tmp_path)
    assert registry.wait_for_change(0.01)  # listening
    postgres.stop()
    try:
        with pytest.raises(RegistryUnavailable):
            registry.wait_for_change(1.0)
        with pytest.raises(RegistryUnavailable, match="keep serving"):
            registry.functions()
    finally:
        postgres.start()
    assert registry.functions() == []
    assert registry.wait_for_change(1.0)  # reconnected: re-read, announcements were missed
    registry.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://edgefn@127.0.0.1:{closed}/edgefn", "cannot connect to the registry"),
        ("mysql://db/edgefn", "must start with postgresql://"),
    ],
)
def test_serve_refuses_a_registry_it_cannot_use_in_one_line(
    url: str, message: str, tmp_path: Path
) -> None:
    with closed_port() as port:
        result = CliRunner().invoke(
            main,
            ["serve", "--database-url", url.format(closed=port), "--data-dir", str(tmp_path),
             "--port", "0"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
