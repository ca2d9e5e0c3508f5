"""The `edgefn` command line, driven through click's CliRunner."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgefn_platform._printable import printable_lines
from edgefn_platform.builder import BuildError
from edgefn_platform.cli import main
from edgefn_platform.client import AdminError, GatewayUnreachable
from edgefn_platform.gateway import InvalidAssets
from edgefn_platform.gateway._deploy import StorageFull
from edgefn_platform.gateway._errors import GatewayError
from edgefn_platform.gateway.config import TokenError
from edgefn_platform.gateway.policy import ConfigError
from edgefn_platform.manifest import ManifestError, load_manifest
from edgefn_platform.registry import FunctionNotFound, RegistryUnavailable
from edgefn_platform.scaffold import ScaffoldError
from edgefn_runtime import EdgefnError, InvalidComponent


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgefn new demo`, built once for the tests of this module."""
    parent = tmp_path_factory.mktemp("functions")
    result = CliRunner().invoke(main, ["new", "demo", "--dir", str(parent)])
    assert result.exit_code == 0, result.output
    assert "Created" in result.output
    return parent / "demo"


def test_new_build_invoke(created: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(main, ["build", str(created)])
    assert built.exit_code == 0, built.output
    assert "Built" in built.output and "demo.wasm" in built.output and "sha256" in built.output
    assert (created / ".edgefn" / "demo.wasm").exists()

    again = runner.invoke(main, ["build", str(created)])
    assert again.exit_code == 0 and "Up to date" in again.output
    # A manifest's settings are not build inputs: a new limit needs no build.
    manifest = created / "edgefn.toml"
    text = manifest.read_text()
    manifest.write_text(text.replace('timeout = "2s"', 'timeout = "3s"'))
    try:
        assert "Up to date" in runner.invoke(main, ["build", str(created)]).output
    finally:
        manifest.write_text(text)

    invoked = runner.invoke(main, ["invoke", str(created), "/hello/ada?greeting=Hi", "-i"])
    assert invoked.exit_code == 0, invoked.output
    assert "HTTP 200" in invoked.output
    assert "Hi, ada!" in invoked.output
    assert "usage: fuel" in invoked.output


def test_a_build_is_reused_unless_a_build_input_changed(tmp_path: Path) -> None:
    from edgefn_platform.builder import _source_hash

    directory = tmp_path / "fn"
    directory.mkdir()
    (directory / "app.py").write_text("from edgefn import App\napp = App()\n")
    base = 'name = "fn"\n[env]\nA = "1"\n'

    def digest(manifest: str = base, app: str = "") -> str:
        (directory / "edgefn.toml").write_text(manifest)
        (directory / "app.py").write_text("from edgefn import App\napp = App()\n" + app)
        return _source_hash(directory, load_manifest(directory))

    built = digest()
    # Settings the component does not hold: the same build.
    same = ['route = "/x"\n', "reuse = true\n", "[limits]\nfuel = 1_000_000\n", 'secrets = ["S"]\n']
    for extra in same:
        assert digest(base.replace("[env]", f"{extra}[env]", 1)) == built, extra
    assert digest(base + "# a comment\n") == built
    # What it is built from: a new build.
    changed = [
        digest(base.replace('"1"', '"2"')),  # the entry is checked with the environment
        digest(base + 'B = "2"\n'),
        digest(base.replace("[env]", 'entry = "app:other"\n[env]')),
        digest(base.replace("[env]", 'requirements = ["six"]\n[env]')),
        digest(app="# edited\n"),
    ]
    assert built not in changed and len(set(changed)) == len(changed)


def test_invoke_sends_method_headers_and_body_from_file(created: Path, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"x": 1}')
    result = CliRunner().invoke(
        main, ["invoke", str(created), "/echo", "-X", "post", "-H", "X-Test: 1", "-d", f"@{body}"]
    )
    assert result.exit_code == 0, result.output
    assert '{"you_sent":{"x":1}}' in result.output


def test_generated_tests_pass_natively(created: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(created / "tests")],
        capture_output=True,
        text=True,
        cwd=created,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_new_in_a_folder_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = CliRunner().invoke(main, ["new", "demo", "--dir", str(a_file / "sub")])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: cannot create {a_file / 'sub' / 'demo'}: Not a directory\n"


def test_new_refuses_bad_names_and_existing_folders(created: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["new", "Bad_Name", "--dir", str(created.parent)])
    assert bad.exit_code == 1 and "name:" in bad.output and "Traceback" not in bad.output
    exists = runner.invoke(main, ["new", "demo", "--dir", str(created.parent)])
    assert exists.exit_code == 1 and "already exists" in exists.output


def make_function(parent: Path, name: str, app: str, extra: str = "") -> Path:
    directory = parent / name
    directory.mkdir()
    (directory / "edgefn.toml").write_text(f'name = "{name}"\n{extra}')
    (directory / "app.py").write_text(app)
    return directory


def test_syntax_error_is_reported_with_file_and_line(tmp_path: Path) -> None:
    source = "from edgefn import App\napp = App()\ndef broken(:\n    pass\n"
    directory = make_function(tmp_path, "broken", source)
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "app.py:3:" in result.output and "SyntaxError" in result.output
    assert "Traceback" not in result.output and "componentize" not in result.output


def test_missing_entry_is_reported(tmp_path: Path) -> None:
    directory = make_function(tmp_path, "noentry", "from edgefn import App\napplication = App()\n")
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "module 'app' has no attribute 'app'" in result.output


def test_entry_that_is_not_an_app_is_reported(tmp_path: Path) -> None:
    directory = make_function(tmp_path, "notapp", "def app():\n    pass\n")
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "is a function, not an edgefn.App" in result.output


def test_import_error_names_the_line(tmp_path: Path) -> None:
    directory = make_function(
        tmp_path, "importer", "from edgefn import App\nimport nosuchmodule\napp = App()\n"
    )
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "app.py:2" in result.output and "No module named 'nosuchmodule'" in result.output


def test_host_packages_are_not_importable(tmp_path: Path) -> None:
    source = "import click\nfrom edgefn import App\napp = App()\n"
    directory = make_function(tmp_path, "hostdep", source)
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "app.py:1" in result.output and "No module named 'click'" in result.output


def test_bad_manifest_is_one_clear_line(tmp_path: Path) -> None:
    directory = make_function(tmp_path, "badlimits", "", extra="[limits]\nmemory = 'huge'\n")
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1
    assert "limits.memory: expected a size" in result.output


def test_native_requirement_is_refused_with_its_name(tmp_path: Path) -> None:
    directory = make_function(
        tmp_path,
        "native",
        "from edgefn import App\napp = App()\n",
        extra='requirements = ["markupsafe==3.0.3"]\n',
    )
    result = CliRunner().invoke(main, ["build", str(directory)])
    assert result.exit_code == 1, result.output
    assert "native extensions" in result.output and "markupsafe" in result.output.lower()


def test_pure_requirement_is_bundled(tmp_path: Path) -> None:
    app = (
        "import six\nfrom edgefn import App\napp = App()\n\n"
        "@app.get('/')\ndef index(request):\n    return {'six': six.__name__}\n"
    )
    directory = make_function(tmp_path, "pure", app, extra='requirements = ["six==1.17.0"]\n')
    result = CliRunner().invoke(main, ["invoke", str(directory), "/"])
    assert result.exit_code == 0, result.output
    assert '{"six":"six"}' in result.output


def test_an_error_status_is_an_answer_exiting_0_and_a_malformed_header_exits_2(
    created: Path,
) -> None:
    # The function answered (405): that is its response, shown, not a CLI failure;
    # a function that fails is (test_a_function_failure_exits_1_with_its_code_after_its_logs).
    result = CliRunner().invoke(main, ["invoke", str(created), "/echo", "-X", "GET"])
    assert result.exit_code == 0 and "HTTP 405" in result.output
    bad_header = CliRunner().invoke(main, ["invoke", str(created), "/", "-H", "no-colon"])
    assert bad_header.exit_code == 2 and "NAME: VALUE" in bad_header.output


def test_invoke_ignores_the_gateways_engine_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # One request on the CLI's thread: nothing to make ahead, no event loop to run on.
    monkeypatch.setenv("EDGEFN_AHEAD_INSTANCES", "many")
    monkeypatch.setenv("EDGEFN_INLINE_CPU_MS", "fast")
    hostile = Path(__file__).resolve().parent / "functions" / "hostile"
    result = CliRunner().invoke(main, ["invoke", str(hostile), "/counter"])
    assert result.exit_code == 0, result.output
    assert '{"counter":1}' in result.output


def test_invoke_shows_function_log_lines_escaped() -> None:
    hostile = Path(__file__).resolve().parent / "functions" / "hostile"
    path = "/print?text=%1B%5B2J%1B%5D0%3Bowned%07%E2%80%AEx"  # ESC[2J, ESC]0;owned BEL, RLO
    result = CliRunner().invoke(main, ["invoke", str(hostile), path])
    assert result.exit_code == 0, result.output
    assert "log | \\x1b[2J\\x1b]0;owned\\x07\\u202ex\n" in result.stderr
    assert not set(result.stderr) & set("\x1b\x07\u202e")


@pytest.mark.parametrize("path", ["/bad-header", "/control-header"])
def test_invoke_refuses_a_header_the_gateway_would_refuse(path: str) -> None:
    hostile = Path(__file__).resolve().parent / "functions" / "hostile"
    result = CliRunner().invoke(main, ["invoke", str(hostile), path])
    assert result.exit_code == 1, result.output
    assert "invalid_response: the function answered with an invalid header 'x-evil'" in (
        result.stderr
    )
    assert not set(result.output) & set("\x1b\x07")


def test_a_function_failure_exits_1_with_its_code_after_its_logs() -> None:
    hostile = Path(__file__).resolve().parent / "functions" / "hostile"
    result = CliRunner().invoke(main, ["invoke", str(hostile), "/raise"])
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith("Error: function_error: KeyError: 'no such thing'\n")
    assert "Traceback" not in result.output.splitlines()[-1]


# Every kind of edgefn error, as the CLI shows it: one escaped line, its exit code.
ERRORS = [
    (ManifestError("edgefn.toml", ["name: must be lowercase"]), 1),
    (BuildError("componentize-py failed:\n  app.py:3: SyntaxError"), 1),
    (ScaffoldError("demo already exists; choose another name or remove it"), 1),
    (ConfigError("backpressure.queue_wait: expected a duration"), 1),
    (TokenError("the admin token from --token/EDGEFN_TOKEN is empty"), 1),
    (InvalidComponent("not a component: \x1b[2Jcleared"), 1),
    (FunctionNotFound("ghost"), 1),
    (RegistryUnavailable("cannot connect to the registry"), 1),
    (InvalidAssets("the assets archive cannot be unpacked"), 1),
    (StorageFull("the data directory is full"), 1),
    (GatewayError(503, "overloaded", "too many requests"), 1),
    (AdminError(404, "function_not_found", "no function named 'ghost' is deployed"), 1),
    (GatewayUnreachable("cannot reach the gateway admin API at http://127.0.0.1:1"), 3),
]


@pytest.mark.parametrize(("error", "exit_code"), ERRORS, ids=lambda e: type(e).__name__)
def test_every_edgefn_error_is_one_escaped_line_and_its_exit_code(
    error: EdgefnError, exit_code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise error

    monkeypatch.setattr("edgefn_platform.cli._functions.create_function", fail)
    result = CliRunner().invoke(main, ["new", "demo", "--dir", str(tmp_path)])
    assert result.exit_code == exit_code == error.exit_code
    assert result.stdout == ""
    assert result.stderr == f"Error: {printable_lines(str(error))}\n"
    assert "\x1b" not in result.stderr


def test_an_unexpected_error_is_one_line_naming_it_and_where_to_report_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr("edgefn_platform.cli._functions.create_function", fail)
    result = CliRunner().invoke(main, ["new", "demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: unexpected ZeroDivisionError: division by zero\\n")
    assert "bug in edgefn" in result.stderr and "EDGEFN_DEBUG=1" in result.stderr

    debug = CliRunner().invoke(
        main, ["new", "demo", "--dir", str(tmp_path)], env={"EDGEFN_DEBUG": "1"}
    )
    assert isinstance(debug.exception, ZeroDivisionError)  # raised, with its traceback


def test_bad_option_values_are_usage_errors(created: Path, tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["invoke", str(created), "/", "-d", f"@{tmp_path}/nope"])
    assert missing.exit_code == 2 and "cannot read" in missing.output and "--data" in missing.output
    env = {"EDGEFN_SIGNING_KEY": "00" * 32}
    expiry = CliRunner().invoke(main, ["sign", "/fn/a", "--expires-in", "soon"], env=env)
    assert expiry.exit_code == 2 and "--expires-in" in expiry.output


class FakeAdminAPI(BaseHTTPRequestHandler):
    """Answers as the admin API would, or as a proxy in front of it."""

    ANSWERS: dict[str, tuple[int, str, object]] = {
        "/v1/functions/ghost": (
            404,
            "application/json",
            {"error": {"code": "function_not_found", "message": "no function named 'ghost'"}},
        ),
        "/v1/functions/proxied": (502, "text/html", "<html>502 Bad Gateway</html>"),
        "/v1/functions/demo": (
            200,
            "application/json",
            {
                "name": "demo",
                "url": "http://127.0.0.1:8080/demo",
                "versions": 2,
                "active": {
                    "version": 2,
                    "created_at": 1_700_000_000.0,
                    "size": 4_000_000,
                    "sha256": "ab" * 32,
                    "env": ["GREETING"],
                    "limits": {"memory": 64 * 2**20},  # the manifest's: not what runs
                    "key_value_stores": ["default", "sessions"],
                    "secrets": ["ORIGIN_TOKEN", "API_KEY"],
                },
            },
        ),
        "/v1/functions/demo/secrets": (
            200,
            "application/json",
            {
                "secrets": [
                    {"name": "API_KEY", "set_at": 1_700_000_000.0, "declared": True},
                    {"name": "ORIGIN_TOKEN", "set_at": None, "declared": True},
                    {"name": "OLD", "set_at": 1_600_000_000.0, "declared": False},
                ]
            },
        ),
        "/v1/functions/demo/limits": (
            200,
            "application/json",
            {
                "limits": {
                    "memory": {"value": 128 * 2**20, "source": "override"},
                    "timeout": {"value": 2.0, "source": "default"},
                    "fuel": {"value": 5e9, "source": "maximum"},
                },
                "warnings": ["fuel: the manifest's 9e9 is above the gateway's maximum"],
            },
        ),
    }

    tokens: list[str | None] = []  # the Authorization header of each request

    def do_GET(self) -> None:
        self.tokens.append(self.headers.get("authorization"))
        status, kind, body = self.ANSWERS.get(self.path, (404, "text/plain", "not found"))
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAdminAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def admin(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--gateway", url, "--token", "t"])


def test_the_gateway_answering_an_error_exits_1_with_its_code_and_status(admin_api: str) -> None:
    result = admin(admin_api, "info", "ghost")
    assert result.exit_code == 1
    assert result.stderr == ("Error: no function named 'ghost' (function_not_found, HTTP 404)\n")
    proxied = admin(admin_api, "info", "proxied")
    assert proxied.exit_code == 1
    assert proxied.stderr == "Error: <html>502 Bad Gateway</html> (http_error, HTTP 502)\n"


def test_the_token_is_read_from_the_data_directory_serve_would_use(
    admin_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "admin-token").write_text("from-the-data-dir\n")
    monkeypatch.chdir(tmp_path)  # no ./.edgefn-data here
    FakeAdminAPI.tokens.clear()
    env = {"EDGEFN_DATA_DIR": str(tmp_path), "EDGEFN_TOKEN": None}
    result = CliRunner().invoke(main, ["info", "demo", "--gateway", admin_api], env=env)
    assert result.exit_code == 0, result.output
    assert FakeAdminAPI.tokens[0] == "Bearer from-the-data-dir"


def test_serve_refuses_a_bad_port_or_data_directory_in_one_line(tmp_path: Path) -> None:
    port = CliRunner().invoke(main, ["serve", "--port", "99999"])
    assert port.exit_code == 2 and "99999 is not in the range 0<=x<=65535" in port.output
    # A stop that would never end: SIGTERM must stop the gateway.
    for option, value in (("--shutdown-delay", "nan"), ("--drain-timeout", "inf")):
        result = CliRunner().invoke(main, ["serve", option, value])
        assert result.exit_code == 2, result.output
        assert "must be 0 to 3600 seconds, got" in result.output
    negative = CliRunner().invoke(main, ["serve", "--shutdown-delay", "-1"])
    assert negative.exit_code == 2 and "-1.0 is not in the range x>=0" in negative.output
    a_file = tmp_path / "file"
    a_file.write_text("")
    ports = ["--port", "0", "--admin-port", "0", "--data-dir"]
    for option in ("--data-dir", "--cache-dir"):
        args = ["serve", *ports, str(tmp_path / "data"), option, str(a_file / "sub")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert result.stderr == (
            f"Error: cannot use {a_file / 'sub'} as a directory: Not a directory\n"
        )


def test_an_unreachable_gateway_exits_3() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        result = admin(url, "ls")
    assert result.exit_code == 3
    assert result.stderr.startswith(f"Error: cannot reach the gateway admin API at {url}: ")
    assert result.stderr.count("\n") == 1


def test_info_shows_the_effective_limits_and_where_each_comes_from(admin_api: str) -> None:
    result = admin(admin_api, "info", "demo")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "limit memory: 128.0 MiB (override)" in lines
    assert "limit timeout: 2 s (default)" in lines
    assert "limit fuel: 5,000,000,000 (maximum)" in lines
    assert "64 MiB" not in result.stdout
    assert "warning: fuel: the manifest's 9e9" in result.stderr


def test_info_shows_the_declared_stores_and_secrets_and_which_are_not_set(admin_api: str) -> None:
    result = admin(admin_api, "info", "demo")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "kv stores: default, sessions" in lines
    set_at = datetime.fromtimestamp(1_700_000_000).strftime("%Y-%m-%d %H:%M:%S")
    assert (
        f"secrets: ORIGIN_TOKEN (not set: edgefn secrets set demo ORIGIN_TOKEN), "
        f"API_KEY (set {set_at})"
    ) in lines
    assert "OLD" not in result.stdout  # set, but no longer declared: `edgefn secrets ls` shows it
