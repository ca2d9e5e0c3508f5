"""The `edgefn` command line, driven through click's CliRunner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefn_platform.cli import main


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

    invoked = runner.invoke(main, ["invoke", str(created), "/hello/ada?greeting=Hi", "-i"])
    assert invoked.exit_code == 0, invoked.output
    assert "HTTP 200" in invoked.output
    assert "Hi, ada!" in invoked.output
    assert "usage: fuel" in invoked.output


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


def test_runtime_errors_exit_non_zero_with_the_code(created: Path) -> None:
    result = CliRunner().invoke(main, ["invoke", str(created), "/echo", "-X", "GET"])
    assert result.exit_code == 0 and "HTTP 405" in result.output
    bad_header = CliRunner().invoke(main, ["invoke", str(created), "/", "-H", "no-colon"])
    assert bad_header.exit_code == 2 and "NAME: VALUE" in bad_header.output


def test_invoke_shows_function_log_lines_escaped() -> None:
    hostile = Path(__file__).resolve().parent / "functions" / "hostile"
    path = "/print?text=%1B%5B2J%1B%5D0%3Bowned%07%E2%80%AEx"  # ESC[2J, ESC]0;owned BEL, RLO
    result = CliRunner().invoke(main, ["invoke", str(hostile), path])
    assert result.exit_code == 0, result.output
    assert "log | \\x1b[2J\\x1b]0;owned\\x07\\u202ex\n" in result.stderr
    assert not set(result.stderr) & set("\x1b\x07\u202e")
