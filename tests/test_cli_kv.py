"""`edgefn kv get|set|rm|ls` and the admin API's key-value routes against a real
gateway: raw values, keys that need percent-encoding, and every error's status
and code."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

import attacks
from edgefn_platform.cli import main
from edgefn_platform.manifest import Manifest
from edgefn_platform.registry import open_registry
from gateway_process import GatewayProcess, cli
from waiting import wait_until

AREA = "Key-value admin API (tests/test_cli_kv.py)"
NAME, OTHER = "kv-probe", "kv-other"
WEIRD = "a/b c/é日本/../%2F?x=1#frag"


def seed(data_dir: Path, name: str) -> None:
    """Register `name` straight in the gateway's registry, with a stub component:
    the admin API's key-value routes need the function's record and limits, not a
    component that loads (the gateway logs that it cannot load this one), so
    these tests neither build nor wait for one."""
    registry = open_registry(None, data_dir)
    try:
        stub = data_dir / "stub.wasm"
        stub.write_bytes(b"\0asm stub")
        manifest = Manifest(name=name, route=f"/{name}", key_value_stores=("default",))
        sha256 = hashlib.sha256(stub.read_bytes()).hexdigest()
        registry.deploy(name, f"/{name}", manifest.to_dict(), stub, sha256)
    finally:
        registry.close()


def set_overrides(data_dir: Path, limits: dict[str, int]) -> None:
    registry = open_registry(None, data_dir)
    try:
        registry.set_overrides(NAME, limits)
    finally:
        registry.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("cli-kv") / "data"
    data_dir.mkdir()
    for name in (NAME, OTHER):
        seed(data_dir, name)
    with GatewayProcess(data_dir) as process:
        yield process


def path(store: str, key: str | None = None, name: str = NAME) -> str:
    base = f"/v1/functions/{name}/kv/{store}"
    return base if key is None else f"{base}/{quote(key, safe='')}"


def error_code(response: object) -> str:
    return str(response.json()["error"]["code"])  # type: ignore[attr-defined]


def test_set_get_ls_rm_through_the_cli(gateway: GatewayProcess) -> None:
    done = cli(gateway, "kv", "set", NAME, "default", "greeting", "héllo")
    assert done.exit_code == 0, done.output
    got = cli(gateway, "kv", "get", NAME, "default", "greeting")
    assert got.exit_code == 0 and got.stdout_bytes == "héllo".encode()
    # From stdin: raw bytes, a NUL and invalid UTF-8 included.
    raw = bytes(range(256)) * 3
    runner = CliRunner()
    for value_argument in (["-"], []):
        done = runner.invoke(
            main,
            ["kv", "set", NAME, "default", "blob", *value_argument, "--gateway",
             gateway.admin_url, "--token", gateway.token],
            input=raw,
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        assert cli(gateway, "kv", "get", NAME, "default", "blob").stdout_bytes == raw
    for key in ("user:2", "user:1", "user:10", "session"):
        assert cli(gateway, "kv", "set", NAME, "default", key, "1").exit_code == 0
    listed = cli(gateway, "kv", "ls", NAME, "default", "--prefix", "user:")
    assert listed.stdout.splitlines() == ["user:1", "user:10", "user:2"]
    listed = cli(gateway, "kv", "ls", NAME, "default", "--limit", "2")
    assert listed.stdout.splitlines() == ["blob", "greeting"]
    assert cli(gateway, "kv", "rm", NAME, "default", "greeting").exit_code == 0
    absent = cli(gateway, "kv", "get", NAME, "default", "greeting")
    assert absent.exit_code == 1 and absent.stdout_bytes == b""
    assert "kv_key_not_found" in absent.stderr and "'greeting'" in absent.stderr
    # Another function's store of the same name holds none of it.
    assert cli(gateway, "kv", "ls", OTHER, "default").stdout == ""


def test_a_key_with_slashes_spaces_dots_and_non_ascii_round_trips(gateway: GatewayProcess) -> None:
    assert cli(gateway, "kv", "set", NAME, "paths", WEIRD, "through the cli").exit_code == 0
    assert cli(gateway, "kv", "get", NAME, "paths", WEIRD).stdout == "through the cli"
    response = gateway.admin("GET", path("paths", WEIRD))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"through the cli"
    assert gateway.admin("GET", path("paths")).json() == {"keys": [WEIRD]}
    # A key that looks like a way out of the function's store is only a key of it.
    escape = f"../../{OTHER}/kv/default/secret"
    assert gateway.admin("PUT", path("paths", escape), content=b"x").status_code == 204
    assert gateway.admin("GET", path("paths")).json() == {"keys": [escape, WEIRD]}
    assert gateway.admin("GET", path("default", name=OTHER)).json() == {"keys": []}
    assert cli(gateway, "kv", "rm", NAME, "paths", WEIRD).exit_code == 0
    assert gateway.admin("GET", path("paths", WEIRD)).status_code == 404
    attacks.record(
        AREA,
        "a key with `/`, `..`, `%2F`, `?` and `#` in the admin URL, aimed at another "
        "function's store",
        "the rest of the decoded path is the key, in the named function's store: "
        "the other function's store stays empty",
    )


def test_ls_shows_a_function_s_keys_without_their_terminal_controls(
    gateway: GatewayProcess,
) -> None:
    # Keys are written by function code and cannot hold C0 controls, but C1
    # ones (U+009B is CSI to an 8-bit terminal) and bidirectional overrides
    # (which make "evil\u202efdp.exe" read "evilexe.pdf") are printable text to it.
    hostile = "a\u009b2J-b", "evil\u202efdp.exe"
    for key in hostile:
        assert gateway.admin("PUT", path("terminal", key), content=b"x").status_code == 204
    listed = cli(gateway, "kv", "ls", NAME, "terminal")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == ["a\\x9b2J-b", "evil\\u202efdp.exe"]
    attacks.record(
        AREA,
        "a function stores keys holding a C1 CSI or a bidirectional override, for "
        "`edgefn kv ls` to print on an operator's terminal",
        "`edgefn kv ls` escapes them (`\\x9b`, `\\u202e`), as every CLI output of guest text does",
    )


def test_errors_have_their_status_and_code(gateway: GatewayProcess) -> None:
    cases = [
        ("GET", "/v1/functions/nobody/kv/default/k", None, 404, "function_not_found"),
        ("PUT", "/v1/functions/nobody/kv/default/k", b"v", 404, "function_not_found"),
        ("GET", path("default", "absent"), None, 404, "kv_key_not_found"),
        ("GET", path("Bad!", "k"), None, 400, "invalid_kv_store"),
        ("GET", path("Bad!"), None, 400, "invalid_kv_store"),
        ("PUT", path("default", "line\nbreak"), b"v", 400, "invalid_kv_key"),
        ("DELETE", path("default", "k" * 513), None, 400, "invalid_kv_key"),
        ("PUT", path("default", "k") + "?ttl=0", b"v", 400, "invalid_request"),
        ("PUT", path("default", "k") + "?ttl=inf", b"v", 400, "invalid_request"),
        ("GET", path("default") + "?limit=1001", None, 400, "invalid_request"),
    ]
    for method, url, body, status, code in cases:
        response = gateway.admin(method, url, content=body)
        assert (response.status_code, error_code(response)) == (status, code), (method, url)
    unauthorized = httpx.get(gateway.admin_url + path("default", "k"))
    assert (unauthorized.status_code, error_code(unauthorized)) == (401, "unauthorized")


def test_writes_obey_the_functions_limits(gateway: GatewayProcess) -> None:
    set_overrides(gateway.data_dir, {"max_kv_value": 100, "max_kv_keys": 2})
    try:
        too_large = gateway.admin("PUT", path("limited", "big"), content=b"x" * 101)
        assert (too_large.status_code, error_code(too_large)) == (413, "kv_value_too_large")
        assert "max_kv_value of 100" in too_large.text and "--max-kv-value" in too_large.text
        for key in ("a", "b"):
            assert gateway.admin("PUT", path("limited", key), content=b"x" * 100).status_code == 204
        full = gateway.admin("PUT", path("limited", "c"), content=b"x")
        assert (full.status_code, error_code(full)) == (507, "kv_quota_exceeded")
        assert "max_kv_keys of 2" in full.text
        quota = cli(gateway, "kv", "set", NAME, "limited", "c", "x")
        assert quota.exit_code == 1 and "kv_quota_exceeded, HTTP 507" in quota.stderr
    finally:
        set_overrides(gateway.data_dir, {})


def test_a_ttl_set_through_the_cli_expires(gateway: GatewayProcess) -> None:
    done = cli(gateway, "kv", "set", NAME, "default", "brief", "x", "--ttl", "0.5")
    assert done.exit_code == 0 and "expiring in 0.5 s" in done.stdout
    started = time.monotonic()
    wait_until(
        lambda: gateway.admin("GET", path("default", "brief")).status_code == 404,
        timeout=10,
        message="the key never expired",
    )
    assert time.monotonic() - started >= 0.3


def test_removing_a_function_removes_its_stores(gateway: GatewayProcess) -> None:
    name = "kv-removed"
    seed(gateway.data_dir, name)
    assert gateway.admin("PUT", path("default", "k", name=name), content=b"v").status_code == 204
    assert gateway.admin("DELETE", f"/v1/functions/{name}").status_code == 204
    seed(gateway.data_dir, name)
    assert gateway.admin("GET", path("default", name=name)).json() == {"keys": []}


def test_info_shows_the_stores_the_active_version_declares(gateway: GatewayProcess) -> None:
    active = gateway.admin("GET", f"/v1/functions/{NAME}").json()["active"]
    assert active["key_value_stores"] == ["default"] and active["secrets"] == []
    shown = cli(gateway, "info", NAME)
    assert shown.exit_code == 0, shown.output
    assert "kv stores:   default" in shown.stdout.splitlines()
    assert "secrets:     -" in shown.stdout.splitlines()
