"""`edgefn ls`, `info`, `rollback` against a real gateway, and every admin command
against a gateway that cannot be reached (exit code 3, one line, no traceback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from edgefn_platform import build
from edgefn_platform.cli import main
from gateway_process import ROOT, GatewayProcess, cli, closed_port

HELLO = ROOT / "functions" / "hello"
NAME = "cli-probe"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with NAME at versions 1 and 2 (the same component, two manifests)."""
    component = build(HELLO).path.read_bytes()
    process = GatewayProcess(tmp_path_factory.mktemp("cli") / "data").start()
    try:
        for version in (1, 2):
            response = process.admin(
                "POST",
                "/v1/functions",
                data={"manifest": f'name = "{NAME}"\n[env]\nVERSION = "{version}"\n'},
                files={"component": ("c.wasm", component)},
            )
            assert response.status_code == 201, response.text
            assert response.json()["version"] == version
        yield process
    finally:
        process.stop()


@pytest.fixture
def at_version_2(gateway: GatewayProcess) -> GatewayProcess:
    """NAME serving version 2, whatever a test before changed."""
    response = gateway.admin("POST", f"/v1/functions/{NAME}/activate", json={"version": 2})
    assert response.status_code == 200, response.text
    return gateway


def test_ls_lists_each_function_with_its_route_and_active_version(
    at_version_2: GatewayProcess,
) -> None:
    result = cli(at_version_2, "ls")
    assert result.exit_code == 0, result.output
    header, *rows = [line.split() for line in result.stdout.splitlines()]
    assert header == ["NAME", "ROUTE", "VERSION", "UPDATED"]
    assert [row[:3] for row in rows] == [[NAME, f"/{NAME}", "2"]]


def test_info_shows_the_active_version_of_how_many(at_version_2: GatewayProcess) -> None:
    result = cli(at_version_2, "info", NAME)
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert f"name: {NAME}" in lines
    assert f"url: {at_version_2.public_url}/{NAME}" in lines
    assert "version: 2 of 2" in lines
    assert "env: VERSION" in lines
    # The hello manifest's own limits are not this one's: the defaults apply.
    assert "limit timeout: 2 s (default)" in lines, lines


def test_rollback_to_a_version_serves_it_and_says_so(at_version_2: GatewayProcess) -> None:
    result = cli(at_version_2, "rollback", NAME, "--to", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{NAME} now serves version 1, live on 1 worker:")
    active = at_version_2.admin("GET", f"/v1/functions/{NAME}").json()["active"]
    assert active["version"] == 1
    assert at_version_2.get(f"/{NAME}/").status_code == 200


def test_rollback_with_no_earlier_version_exits_1_saying_so(
    at_version_2: GatewayProcess,
) -> None:
    assert cli(at_version_2, "rollback", NAME).exit_code == 0  # 2 -> 1
    result = cli(at_version_2, "rollback", NAME)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {NAME} has no version before 1\n"
    assert at_version_2.admin("GET", f"/v1/functions/{NAME}").json()["active"]["version"] == 1


def test_rollback_to_a_version_that_does_not_exist_exits_1(at_version_2: GatewayProcess) -> None:
    result = cli(at_version_2, "rollback", NAME, "--to", "7")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "(version_not_found, HTTP 404)" in result.stderr
    assert at_version_2.admin("GET", f"/v1/functions/{NAME}").json()["active"]["version"] == 2


ADMIN_COMMANDS = [
    ["deploy", str(HELLO)],
    ["ls"],
    ["info", NAME],
    ["versions", NAME],
    ["rollback", NAME],
    ["rollback", NAME, "--to", "1"],
    ["limits", NAME],
    ["limits", NAME, "--memory", "64MiB"],
    ["limits", NAME, "--reset"],
    ["rm", NAME],
    ["logs", NAME],
    ["logs", NAME, "--follow"],
    ["purge", NAME],
    ["purge", NAME, "--prefix", "/img/"],
]


@pytest.mark.parametrize("args", ADMIN_COMMANDS, ids=" ".join)
def test_every_admin_command_exits_3_on_an_unreachable_gateway(args: list[str]) -> None:
    build(HELLO)  # `deploy` builds first: only the gateway may be missing
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}"
        result = run(*args, "--gateway", url, "--token", "t")
    assert result.exit_code == 3, result.output
    # `deploy` says what it builds and uploads first; then the one error line.
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"Error: cannot reach the gateway admin API at {url}: ")
    assert result.stderr.count("Error:") == 1, result.stderr
    assert "Traceback" not in result.output


def test_a_tls_failure_is_unreachable_too(gateway: GatewayProcess) -> None:
    # The admin listener speaks plain HTTP: a TLS handshake with it fails.
    url = f"https://127.0.0.1:{gateway.admin_port}"
    result = run("ls", "--gateway", url, "--token", gateway.token)
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"Error: cannot reach the gateway admin API at {url}: ")
    assert result.stderr.count("\n") == 1, result.stderr


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))
