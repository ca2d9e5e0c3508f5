"""Crashes: a worker killed mid-request, the gateway killed at every step of a
deploy, rollback and delete, and a full disk; afterwards the registry is
consistent, the right version serves, and no artifact is orphaned or missing."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

import attacks
from edgefn_platform import build
from edgefn_platform._crash import CRASH_POINTS
from gateway_process import ROOT, GatewayProcess, cli, worker_pids
from waiting import wait_until

FUNCTIONS = Path(__file__).resolve().parent / "functions"
AREA = "Crashes and consistency (tests/test_crashes.py)"


def built(directory: Path) -> bytes:
    """A built component (built once per source: `build` skips an unchanged one)."""
    return build(directory).path.read_bytes()


def upload(gateway: GatewayProcess, name: str, component: bytes) -> httpx.Response:
    return gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": f'name = "{name}"'},
        files={"component": ("c.wasm", component)},
    )


def server_side_owner(gateway: GatewayProcess, client: socket.socket) -> int:
    """The worker process holding the server end of `client`'s connection."""
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == gateway.port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            inode = fields[9]
    assert inode is not None, "connection not found in /proc/net/tcp"
    for pid in worker_pids(gateway):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


def test_a_worker_killed_mid_request_is_replaced(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data", workers=2) as gateway:
        assert cli(gateway, "deploy", str(FUNCTIONS / "hostile")).exit_code == 0
        gateway.wait_serving("hostile")
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(b"GET /hostile/sleep?seconds=0.9 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(
                lambda: gateway.metric("edgefn_in_flight", function="hostile") >= 1,
                message="the request to be in its sandbox",
            )
            victim = server_side_owner(gateway, sock)
            survivor = next(pid for pid in worker_pids(gateway) if pid != victim)
            os.kill(victim, signal.SIGKILL)
            sock.settimeout(5)
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 5"), answer[:200]
        wait_until(
            lambda: len(set(worker_pids(gateway)) - {victim}) >= 2,
            timeout=30,
            message="the supervisor to replace the worker",
        )
        gateway.wait_ready()
        assert survivor in worker_pids(gateway)
        for _ in range(10):  # new connections reach both workers
            response = gateway.get("/hostile/json", headers={"connection": "close"})
            assert response.status_code == 200
    attacks.record(
        AREA,
        "SIGKILL a worker mid-request",
        "the client's connection closes; the supervisor starts a new worker; the next "
        "requests succeed; the other worker is untouched",
    )


@dataclass
class Expected:
    """What the registry should hold: function -> (versions, active version's sha256)."""

    functions: dict[str, tuple[list[int], str]] = field(default_factory=dict)


def check_consistent(gateway: GatewayProcess, expected: Expected) -> None:
    """The registry lists what `expected` says and serves it; every stored component is
    referenced and every referenced one stored (on PostgreSQL: in the database, and the
    gateway's local copies are a subset)."""
    listed = {f["name"]: f for f in gateway.admin("GET", "/v1/functions").json()}
    assert set(listed) == set(expected.functions), listed
    referenced = set()
    for name, (versions, active_sha) in expected.functions.items():
        stored = gateway.admin("GET", f"/v1/functions/{name}/versions").json()
        assert [v["version"] for v in stored] == versions
        assert listed[name]["active"]["sha256"] == active_sha
        referenced |= {v["sha256"] for v in stored}
        assert routed(gateway, name)
    assert "gone" in expected.functions or not routed(gateway, "gone")
    artifacts = gateway.data_dir / "artifacts"
    local = {p.stem for p in artifacts.glob("*.wasm")}
    if gateway.database_url is None:
        assert local == referenced  # none orphaned or missing
    else:
        with psycopg.connect(gateway.database_url) as conn:
            keys = [r[0] for r in conn.execute("SELECT key FROM blobs")]
        stored = {k.split("/", 1)[1] for k in keys if k.startswith("component/")}
        assert stored == referenced and local <= referenced
        compiled = {k.split("/", 1)[1].split("-")[0] for k in keys if k.startswith("compiled/")}
        assert compiled == referenced
    assert not list(artifacts.glob("*.partial"))
    scratch = gateway.data_dir / "tmp"
    assert not scratch.exists() or not any(scratch.iterdir())


def routed(gateway: GatewayProcess, name: str) -> bool:
    """Whether the gateway routes /name to a function (whatever the function answers)."""
    response = gateway.get(f"/{name}/")
    if response.status_code != 404 or "json" not in response.headers.get("content-type", ""):
        return True
    return bool(response.json().get("error", {}).get("code") != "no_route")


def sha(component: bytes) -> str:
    return hashlib.sha256(component).hexdigest()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_crash_at_any_step_of_deploy_rollback_or_delete_leaves_it_consistent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    hello = built(ROOT / "functions" / "hello")
    hostile = built(FUNCTIONS / "hostile")
    resize = built(ROOT / "functions" / "image_resize")
    data_dir = tmp_path / "data"
    url = request.getfixturevalue("database_url") if backend == "postgres" else None
    with GatewayProcess(data_dir, database_url=url) as gateway:
        assert upload(gateway, "flip", hello).status_code == 201
    expected = Expected({"flip": ([1], sha(hello))})

    def deploy() -> None:
        upload(gateway, "flip", resize)

    def rollback() -> None:
        gateway.admin("POST", "/v1/functions/flip/activate", json={"version": 1})

    def delete() -> None:
        assert upload(gateway, "gone", hostile).status_code == 201
        gateway.admin("DELETE", "/v1/functions/gone")

    flip_v2 = Expected({"flip": ([1, 2], sha(resize))})
    flip_v2_back = Expected({"flip": ([1, 2], sha(hello))})
    with_gone = Expected({**flip_v2_back.functions, "gone": ([1], sha(hostile))})
    before, after_it = "the version active before it serves", "its result serves"
    steps = {
        "deploy:uploaded": (deploy, expected, before),
        "deploy:compiled": (deploy, expected, before),
        "deploy:stored": (deploy, expected, before),
        "deploy:committed": (deploy, flip_v2, after_it),
        "activate:uncommitted": (rollback, flip_v2, before),
        "activate:committed": (rollback, flip_v2_back, after_it),
        "delete:uncommitted": (delete, with_gone, "the function is still there and serves"),
        "delete:committed": (delete, flip_v2_back, "the function is gone"),
        "delete:unlinking": (delete, flip_v2_back, "the function is gone"),
    }
    assert set(steps) == set(CRASH_POINTS)
    for point, (operation, after, outcome) in steps.items():
        crashing = {"EDGEFN_CRASH_AT": point}
        with GatewayProcess(data_dir, database_url=url, extra_env=crashing) as gateway:
            check_consistent(gateway, expected)  # what the previous crash left
            if point == "delete:unlinking":
                gateway.admin("DELETE", "/v1/functions/gone")  # left by delete:uncommitted
                expected = flip_v2_back
            try:
                operation()
            except httpx.HTTPError:
                pass  # the gateway died under the request, as it should
            assert gateway.process is not None
            assert gateway.process.wait(timeout=60) == -signal.SIGKILL, point
        expected = after
        attacks.record(
            AREA,
            f"SIGKILL the gateway at {point} ({backend} registry)",
            f"after restart: {outcome}; registry consistent; no artifact orphaned or missing",
        )
    with GatewayProcess(data_dir, database_url=url) as gateway:
        check_consistent(gateway, expected)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs for the data directory (CI runs as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_deploy_and_the_previous_version_keeps_serving(
    small_disk: Path, tmp_path: Path
) -> None:
    hello, resize = built(ROOT / "functions" / "hello"), built(ROOT / "functions" / "image_resize")
    gateway = GatewayProcess(small_disk / "data").start()
    try:
        assert upload(gateway, "full", hello).status_code == 201
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        (small_disk / "filler").write_bytes(b"\0" * (free - 2 * 2**20))  # 2 MiB left
        response = upload(gateway, "full", resize)
        assert response.status_code == 507, response.text
        error = response.json()["error"]
        assert error["code"] == "insufficient_storage" and "full" in error["message"]
        assert str(small_disk) not in error["message"]
        assert gateway.get("/full/").status_code == 200  # the previous version serves
        versions = gateway.admin("GET", "/v1/functions/full/versions").json()
        assert [v["version"] for v in versions] == [1]
        (small_disk / "filler").unlink()
        assert upload(gateway, "full", resize).status_code == 201  # and recovers
    finally:
        gateway.stop()
    attacks.record(
        AREA,
        "deploy onto a full disk (96 MiB tmpfs data directory)",
        "507 `insufficient_storage`; the previous version keeps serving; the next deploy "
        "after space is freed succeeds",
    )
