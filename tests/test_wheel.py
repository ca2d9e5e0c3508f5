"""edgefn outside this repository: the wheel, installed into a fresh virtualenv.

The rest of the suite runs against `make install`'s editable install, which sees
every file of the checkout; a wheel ships only what pyproject.toml lists. These
tests build the wheel as the README says (`pip wheel . --no-deps`), check what
it holds, then do what a user outside the repository does: a new venv, the wheel
and its dependencies from the package index, `edgefn new`, `edgefn build`,
`edgefn serve` and `edgefn deploy` in folders of their own, and a request.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway_process import ROOT, children, listening_ports, tail
from waiting import wait_until

# What the wheel is built from: pyproject.toml's package folders and its readme.
_SOURCES = ("pyproject.toml", "README.md", "sdk", "contract", "runtime", "platform")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built from a copy of it (setuptools writes
    `build/` and `*.egg-info` beside the sources: not into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", ".edgefn", "*.egg-info")
    for name in _SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), "."],
         cwd=source)  # fmt: skip
    (built,) = out.glob("edgefn-*.whl")
    return built


def test_the_wheel_holds_every_file_of_every_package_and_the_entry_points(wheel: Path) -> None:
    """Every file under a package folder pyproject.toml maps (modules, the WIT
    contract, the `edgefn new` templates, py.typed markers), and both entry point
    groups: the `edgefn` command and `edgefn.testing`'s native capabilities."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        groups = configparser.ConfigParser()
        groups.read_string(archive.read(entry_points).decode())

    package_dirs = {"edgefn": "sdk/edgefn", "edgefn_contract": "contract/edgefn_contract",
                    "edgefn_runtime": "runtime/edgefn_runtime",
                    "edgefn_platform": "platform/edgefn_platform"}  # fmt: skip
    expected = set()
    for package, folder in package_dirs.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                expected.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    assert "edgefn_contract/wit/edgefn.wit" in expected
    assert "edgefn_platform/templates/hello/tests/test_app.py" in expected
    assert {f"{p}/py.typed" for p in package_dirs} <= expected
    assert expected <= names, f"not in the wheel: {sorted(expected - names)}"

    assert groups["console_scripts"]["edgefn"] == "edgefn_platform.cli:main"
    assert groups["edgefn.testing"]["image"] == "edgefn_runtime.capabilities.image:native_backend"


def test_the_readme_names_the_wheel_make_wheel_builds(wheel: Path) -> None:
    """The install and upgrade commands the README gives name the file by its name."""
    readme = (ROOT / "README.md").read_text()
    assert f"dist/{wheel.name}" in readme
    assert "\nwheel: install\n" in (ROOT / "Makefile").read_text()


@pytest.mark.wasm
def test_a_fresh_venv_with_the_wheel_scaffolds_builds_serves_and_deploys(
    wheel: Path, tmp_path: Path
) -> None:
    """What the README's "Installing outside the repository" says, in folders
    outside the checkout: the venv's own `edgefn` command, no editable install, no
    PYTHONPATH and no EDGEFN_* variable of this test run."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    # Dependencies from the package index, as a user gets them (pip's cache makes
    # a repeat take seconds); the environment as it is, so pip finds its cache.
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
         cwd=tmp_path)  # fmt: skip

    user_cache = tmp_path / "user-cache"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFN_")},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "XDG_CACHE_HOME": str(user_cache),
    }
    env.pop("PYTHONPATH", None)
    edgefn = str(venv / "bin" / "edgefn")

    # The SDK and contract that `edgefn build` packs into guests come from the
    # venv's site-packages, not from this checkout.
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import edgefn, edgefn_contract; print(edgefn.__file__); "
                  "print(edgefn_contract.__file__)"], cwd=tmp_path, env=env)  # fmt: skip
    for line in where.splitlines():
        assert Path(line).is_relative_to(venv), where
    # edgefn.testing finds the image capability through the installed entry point.
    found = _run([str(venv / "bin" / "python"), "-c",
                  "from importlib.metadata import entry_points; "
                  "(e,) = entry_points(group='edgefn.testing', name='image'); "
                  "print(callable(e.load()))"], cwd=tmp_path, env=env)  # fmt: skip
    assert found.strip() == "True"

    projects = tmp_path / "projects"
    projects.mkdir()
    _run([edgefn, "new", "greeter"], cwd=projects, env=env)
    function = projects / "greeter"
    built = _run([edgefn, "build"], cwd=function, env=env)
    assert (function / ".edgefn" / "greeter.wasm").is_file(), built
    assert (function / ".edgefn" / "stage" / "edgefn_contract").is_dir()

    gateway_dir = tmp_path / "gateway"
    gateway_dir.mkdir()
    with _serving(edgefn, gateway_dir, env) as (public, admin):
        token = (gateway_dir / ".edgefn-data" / "admin-token").read_text().strip()
        deployed = _run([edgefn, "deploy", "--gateway", admin, "--token", token],
                        cwd=function, env=env)  # fmt: skip
        assert "Deployed greeter version 1" in deployed
        response = httpx.get(f"{public}/greeter/hello/ada", timeout=30)
        assert (response.status_code, response.text) == (200, "Hello, ada!\n")

    # Build, serve and deploy keep what they write beside the function and in the
    # gateway's data directory (the AOT cache included): nothing in the user's cache.
    assert not (user_cache / "edgefn").exists()
    assert (gateway_dir / ".edgefn-data" / "aot").is_dir()


@contextmanager
def _serving(edgefn: str, folder: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """`edgefn serve` started in `folder` (its data in `folder/.edgefn-data`) on
    ports the kernel picks; its public and admin URLs. Stopped on the way out, and
    killed with its workers if it does not stop, whatever happened inside."""
    log = folder / "serve.log"
    command = [edgefn, "serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
               "--workers", "1"]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=output)
    try:
        ports = listening_ports(log, 0, process)
        public = f"http://127.0.0.1:{ports['public']}"
        admin = f"http://127.0.0.1:{ports['admin']}"

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the gateway exited:\n{tail(log)}")
            try:
                return httpx.get(f"{admin}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.1, message=f"/readyz on {admin}")
        yield public, admin
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, tail(log)
    finally:
        if process.poll() is None:
            for pid in children(process.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # exited meanwhile
            process.kill()
            process.wait()


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run `command`; its output (stdout and stderr), or a failure showing it."""
    result = subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n" + (
        result.stdout
    )
    return result.stdout
