"""A change is live when the admin API answers it: deploy, rollback, limits and rm
return only once every worker of the gateway serves them (`gateway/_rollout.py`),
and a deploy loads and hashes its component once on the worker that takes it."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edgefn_platform.builder import BuildResult
from edgefn_platform.gateway import GatewayConfig
from edgefn_platform.gateway._errors import GatewayError
from edgefn_platform.gateway._rollout import ServingBoard
from edgefn_platform.gateway.admin import AdminApp
from edgefn_platform.gateway.public import Lifecycle
from edgefn_platform.gateway.server import Worker
from edgefn_runtime import Engine, Sandbox, _aot, _engine
from gateway_process import ROOT, GatewayProcess, cli

# Requests right after a change, each on a new connection: SO_REUSEPORT spreads
# them over both workers.
FRESH_REQUESTS = 40


def manifest(env: str) -> str:
    """The hostile fixture as a function `rollout` at /rollout, without its assets;
    `env` tells its versions apart (GET /env shows it)."""
    return f'name = "rollout"\n\n[limits]\ntimeout = "2s"\n\n[env]\nDECLARED = "{env}"\n'


def deploy(gateway: GatewayProcess, build: BuildResult, env: str) -> httpx.Response:
    with build.path.open("rb") as wasm:
        return gateway.admin(
            "POST",
            "/v1/functions",
            data={"manifest": manifest(env)},
            files={"component": ("c.wasm", wasm, "application/wasm")},
        )


def fresh_requests(
    gateway: GatewayProcess, method: str, path: str, **kwargs: object
) -> list[tuple[int, str]]:
    """FRESH_REQUESTS requests, each on its own connection, as (status, body) pairs."""
    answers = []
    for _ in range(FRESH_REQUESTS):
        with httpx.Client(base_url=gateway.public_url, timeout=30) as client:
            response = client.request(method, path, **kwargs)  # type: ignore[arg-type]
            answers.append((response.status_code, response.text))
    return answers


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("rollout") / "data", workers=2)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_a_deploy_serves_on_every_worker_when_it_returns(
    gateway: GatewayProcess, hostile_build: BuildResult
) -> None:
    deployed = deploy(gateway, hostile_build, "one")
    assert deployed.status_code == 201, deployed.text
    version = deployed.json()["version"]
    workers = deployed.json()["workers"]
    assert len(workers) == 2 and {w["version"] for w in workers} == {version}
    answers = fresh_requests(gateway, "GET", "/rollout/env")
    assert all(status == 200 and '"one"' in body for status, body in answers), answers
    shown = gateway.admin("GET", "/v1/functions/rollout").json()["workers"]
    assert sorted(w["pid"] for w in shown) == sorted(w["pid"] for w in workers)

    # A second version, then a rollback to the first: live on return, both times.
    second = deploy(gateway, hostile_build, "two")
    assert second.status_code == 201
    answers = fresh_requests(gateway, "GET", "/rollout/env")
    assert all(status == 200 and '"two"' in body for status, body in answers), answers
    result = cli(gateway, "rollback", "rollout", "--to", str(version))
    assert result.exit_code == 0, result.output
    assert "live on 2 workers" in result.output
    answers = fresh_requests(gateway, "GET", "/rollout/env")
    assert all(status == 200 and '"one"' in body for status, body in answers), answers


def test_limits_apply_on_every_worker_when_the_change_returns(
    gateway: GatewayProcess, hostile_build: BuildResult
) -> None:
    assert deploy(gateway, hostile_build, "limits").status_code == 201
    body = b"x" * 4096
    result = cli(gateway, "limits", "rollout", "--max-body", "1KiB")
    assert result.exit_code == 0, result.output
    assert "live on 2 workers" in result.output
    answers = fresh_requests(gateway, "POST", "/rollout/length", content=body)
    assert all(status == 413 and "body_too_large" in body for status, body in answers), answers
    result = cli(gateway, "limits", "rollout", "--reset")
    assert result.exit_code == 0, result.output
    answers = fresh_requests(gateway, "POST", "/rollout/length", content=body)
    assert all(status == 200 for status, _ in answers), answers


def test_rm_stops_every_worker_when_it_returns(
    gateway: GatewayProcess, hostile_build: BuildResult
) -> None:
    assert deploy(gateway, hostile_build, "gone").status_code == 201
    result = cli(gateway, "rm", "rollout")
    assert result.exit_code == 0, result.output
    assert "no worker of the gateway serves it" in result.output
    answers = fresh_requests(gateway, "GET", "/rollout/env")
    assert all(status == 404 and "no_route" in body for status, body in answers), answers


def test_the_cli_says_a_deploy_is_live(gateway: GatewayProcess) -> None:
    result = cli(gateway, "deploy", str(ROOT / "functions" / "hello"))
    assert result.exit_code == 0, result.output
    assert re.search(r"Deployed hello version \d+ in [\d.]+ s, live on 2 workers: ", result.output)
    assert gateway.get("/hello/").status_code == 200


# The board itself, in this process: what counts as caught up, and the 504s.


def test_the_board_waits_for_every_live_worker(tmp_path: Path) -> None:
    board = ServingBoard(tmp_path)
    board.reset()
    board.publish(7, {"f": 3}, {})
    rollout = board.wait_until_live(7, 1, "f", "f version 3", timeout=1)
    assert rollout.versions("f") == [(os.getpid(), 3)]
    # A report from a process that is gone does not count, nor block.
    (tmp_path / "999999999.json").write_text(
        '{"pid": 999999999, "generation": 1, "functions": {}, "failed": {}}'
    )
    assert len(board.wait_until_live(7, 1, "f", "f version 3", timeout=1).workers) == 1


def test_a_worker_behind_times_out_with_a_clear_504(tmp_path: Path) -> None:
    board = ServingBoard(tmp_path)
    board.publish(6, {"f": 2}, {})
    with pytest.raises(GatewayError) as behind:
        board.wait_until_live(7, 1, "f", "f version 3", timeout=0.1)
    assert (behind.value.status, behind.value.code) == (504, "not_live")
    assert f"worker(s) {os.getpid()} had not loaded it" in behind.value.message
    assert "f version 3 is stored" in behind.value.message
    with pytest.raises(GatewayError) as missing:
        board.wait_until_live(6, 2, "f", "f version 2", timeout=0.1)
    assert "1 worker(s) were not serving" in missing.value.message


def test_a_worker_that_cannot_load_the_change_answers_at_once(tmp_path: Path) -> None:
    board = ServingBoard(tmp_path)
    board.publish(7, {"f": 2}, {"f": 3})
    with pytest.raises(GatewayError) as failed:
        board.wait_until_live(7, 1, "f", "f version 3", timeout=30)
    assert failed.value.code == "not_live"
    assert f"worker {os.getpid()} could not load f version 3" in failed.value.message


def test_a_deploy_loads_and_hashes_its_component_once(
    tmp_path: Path, hostile_build: BuildResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GatewayConfig(
        data_dir=tmp_path / "data", workers=1, token="t", cache_dir=ROOT / ".cache" / "edgefn"
    )
    worker = Worker.open(config)
    loads: list[Path] = []
    hashes: list[Path] = []
    load, sha256_file = Engine.load, _aot.sha256_file

    def counted_load(self: Engine, wasm: Path, **kwargs: object) -> object:
        loads.append(wasm)
        return load(self, wasm, **kwargs)  # type: ignore[arg-type]

    def counted_hash(path: Path) -> str:
        hashes.append(path)
        return sha256_file(path)

    monkeypatch.setattr(Engine, "load", counted_load)
    monkeypatch.setattr(_engine, "sha256_file", counted_hash)
    monkeypatch.setattr(_aot, "sha256_file", counted_hash)
    try:
        with TestClient(AdminApp(worker, "t", Lifecycle(worker.table))) as client:
            with hostile_build.path.open("rb") as wasm:
                response = client.post(
                    "/v1/functions",
                    headers={"authorization": "Bearer t"},
                    data={"manifest": manifest("once")},
                    files={"component": ("c.wasm", wasm, "application/wasm")},
                )
        assert response.status_code == 201, response.text
        assert response.json()["workers"] == [{"pid": os.getpid(), "version": 1}]
        assert len(loads) == 1, loads
        assert hashes == []  # hashed once, as the upload was written to disk
        assert worker.table.match("/rollout/env") is not None
    finally:
        worker.close()


@pytest.mark.parametrize("own_cache", [True, False], ids=["own cache", "--cache-dir"])
def test_rm_removes_the_compiled_artifact_only_from_a_cache_of_its_own(
    tmp_path: Path, hostile: Sandbox, hostile_build: BuildResult, own_cache: bool
) -> None:
    # `hostile` compiled the component into the tests' shared cache; a copy in the
    # data directory's own spares the deploy a compile (~8 s).
    shared = hostile.engine.aot.path_for(hostile.sha256)
    data_dir = tmp_path / "data"
    if own_cache:
        (data_dir / "aot").mkdir(parents=True)
        shutil.copy(shared, data_dir / "aot" / shared.name)
    cache_dir = None if own_cache else shared.parent.parent
    config = GatewayConfig(data_dir=data_dir, workers=1, token="t", cache_dir=cache_dir)
    worker = Worker.open(config)
    artifact = worker.engine.aot.path_for(hostile.sha256)
    try:
        with TestClient(AdminApp(worker, "t", Lifecycle(worker.table))) as client:
            auth = {"authorization": "Bearer t"}
            with hostile_build.path.open("rb") as wasm:
                deployed = client.post(
                    "/v1/functions",
                    headers=auth,
                    data={"manifest": manifest("pruned")},
                    files={"component": ("c.wasm", wasm, "application/wasm")},
                )
            assert deployed.status_code == 201, deployed.text
            assert (worker.engine.aot.hits, worker.engine.aot.misses) == (1, 0)
            assert client.delete("/v1/functions/rollout", headers=auth).status_code == 204
    finally:
        worker.close()
    # Another gateway, `edgefn dev` or `edgefn invoke` may load it from a --cache-dir.
    assert artifact.is_file() != own_cache
