"""`edgefn serve --deploy DIR` and `EDGEFN_DEPLOY` (what `make run` and the compose file
use): the folders are built and deployed before the gateway serves, and a broken
folder stops it with one `Error:` line, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_process import ROOT, GatewayProcess, listening_ports, tail

HELLO = ROOT / "functions" / "hello"
HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
ENV = {**os.environ, "EDGEFN_TOKEN": "t", "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn")}


def serve(data_dir: Path, *args: str) -> list[str]:
    """The command line of `edgefn serve` on ports the kernel picks."""
    return [
        sys.executable, "-m", "edgefn_platform", "serve", "--host", "127.0.0.1",
        "--port", "0", "--admin-port", "0", "--data-dir", str(data_dir), *args,
    ]  # fmt: skip


def test_serve_deploy_builds_and_serves_each_folder_on_every_worker(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data", workers=2, token="t")
    log = gateway.log
    command = serve(gateway.data_dir, "--workers", "2", "--deploy", str(HELLO))
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=ENV, stdout=output, stderr=output)
    gateway.process = process
    try:
        ports = listening_ports(log, 0, process)
        gateway.port, gateway.admin_port = ports["public"], ports["admin"]
        gateway.wait_ready()
        printed = log.read_text()
        assert f"Deployed hello version 1 at {gateway.public_url}/hello" in printed
        assert f"Try: curl {gateway.public_url}/hello/" in printed
        assert gateway.wait_serving("hello") == 1  # on both workers
        for _ in range(6):  # new connections: both workers answer
            response = gateway.get("/hello/", headers={"connection": "close"})
            assert response.json() == {"message": "Hello from hello!"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, tail(log)
    finally:
        gateway.stop()
    assert "Traceback" not in log.read_text()


def test_edgefn_deploy_takes_folders_separated_by_colons(tmp_path: Path) -> None:
    env = {"EDGEFN_DEPLOY": f"{HELLO}:{HOSTILE}"}
    gateway = GatewayProcess(tmp_path / "data", extra_env=env)
    for start in (1, 2):
        gateway.start()
        try:
            assert gateway.get("/hello/hello/you").text == "Hello, you!\n"
            assert gateway.get("/hostile/json").json() == {"ok": True}
            # A restart deploys the same folders again: no new version.
            functions = {f["name"]: f for f in gateway.admin("GET", "/v1/functions").json()}
            assert {name: f["active"]["version"] for name, f in functions.items()} == {
                "hello": 1,
                "hostile": 1,
            }, f"start {start}"
        finally:
            gateway.stop()
    assert gateway.process is not None and gateway.process.returncode == 0


def broken_folders(root: Path) -> dict[str, tuple[Path, int, str]]:
    """Folders `--deploy` cannot use: (folder, exit code, what the error line says)."""
    no_manifest = root / "no-manifest"
    no_manifest.mkdir()
    bad_manifest = root / "bad-manifest"
    bad_manifest.mkdir()
    (bad_manifest / "edgefn.toml").write_text('name = "Bad Name"\n')
    syntax = root / "syntax"
    syntax.mkdir()
    (syntax / "edgefn.toml").write_text('name = "syntax"\n')
    (syntax / "app.py").write_text("from edgefn import App\napp = App(\n")
    return {
        "missing": (root / "missing", 2, "Directory '"),
        "no edgefn.toml": (no_manifest, 1, "edgefn.toml: file not found"),
        "a bad manifest": (bad_manifest, 1, "edgefn.toml: name: must be"),
        "a syntax error": (syntax, 1, "app.py:2:10: SyntaxError"),
    }


@pytest.mark.parametrize("how", ["--deploy", "EDGEFN_DEPLOY"])
@pytest.mark.parametrize(
    "broken", ["missing", "no edgefn.toml", "a bad manifest", "a syntax error"]
)
def test_a_broken_folder_stops_serve_with_one_error_line(
    tmp_path: Path, how: str, broken: str
) -> None:
    folder, exit_code, says = broken_folders(tmp_path)[broken]
    env = dict(ENV)
    if how == "--deploy":
        deploys = ["--deploy", str(HELLO), "--deploy", str(folder)]
        command = serve(tmp_path / "data", "--workers", "1", *deploys)
    else:
        command = serve(tmp_path / "data", "--workers", "1")
        env["EDGEFN_DEPLOY"] = f"{HELLO}:{folder}"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == exit_code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # It stopped before serving: no listener was announced.
    assert "edgefn: public" not in result.stderr
