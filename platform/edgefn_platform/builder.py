"""`edgefn build`: a function folder -> a WebAssembly component (componentize-py).

Before componentize-py runs (about 6 s), the sources are compiled and the entry
imported natively, so syntax errors and missing entries are reported in edgefn's
words, with file and line. Builds are skipped when nothing they depend on
changed: the function's files, the SDK, the WIT contract and componentize-py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import edgefn
import edgefn_contract
from edgefn_runtime import EdgefnError

from .manifest import MANIFEST_FILE, Manifest, load_manifest

__all__ = ["BuildError", "BuildResult", "DevRunner", "build", "build_dev_runner", "output_path"]

BUILD_DIR = ".edgefn"
_WORLD = "handler"
_ENTRY_MODULE = "_edgefn_entry"
# The dev runner (`edgefn dev`): the SDK's handler that imports the function from
# its source folder when an instance starts (`edgefn._dev`), in its own world.
_DEV_WORLD = "dev-runner"
_DEV_ENTRY = (
    "import sys\n"
    "import edgefn._guest  # all a built function's entry has loaded before the function\n"
    "_built = frozenset(sys.modules)\n"
    "from edgefn._dev import handler\n"
    "IncomingHandler = handler(_built)\n"
)
_GUEST_PYTHON = "python3.14"  # the CPython componentize-py 0.25 embeds
_SKIP = {BUILD_DIR, "__pycache__", ".git", ".pytest_cache", "tests"}
_CHECK_SCRIPT = Path(__file__).with_name("_entry_check.py")

# What every component holds beside the function: the SDK and the contract it
# shares with the host. Both import only the standard library at import time
# (edgefn.testing included: it finds the runtime through an entry point, when a
# native test calls it), so they are copied whole.
_GUEST_PACKAGES = (edgefn, edgefn_contract)

Progress = Callable[[str], None]


class BuildError(EdgefnError):
    """The function cannot be built; the message says where and why."""

    code = "build_failed"
    status = 400


@dataclass(frozen=True)
class BuildResult:
    manifest: Manifest
    path: Path
    sha256: str
    size: int
    seconds: float
    cached: bool


def output_path(directory: Path, manifest: Manifest) -> Path:
    return directory / BUILD_DIR / f"{manifest.name}.wasm"


def build(
    directory: Path | str = ".", *, force: bool = False, progress: Progress | None = None
) -> BuildResult:
    """Build the function in `directory` into `directory/.edgefn/<name>.wasm`."""
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    directory = Path(directory).resolve()
    manifest = load_manifest(directory)
    output = output_path(directory, manifest)
    stamp = output.with_suffix(".build.json")
    source_hash = _source_hash(directory, manifest)
    if not force and output.exists() and _read_stamp(stamp).get("source") == source_hash:
        sha256 = _read_stamp(stamp)["sha256"]
        return BuildResult(manifest, output, sha256, output.stat().st_size, 0.0, cached=True)

    work = directory / BUILD_DIR
    deps = work / "deps"
    # componentize-py looks for site-packages in this layout under $VIRTUAL_ENV.
    site = deps / "lib" / _GUEST_PYTHON / "site-packages"
    shutil.rmtree(deps, ignore_errors=True)
    site.mkdir(parents=True)
    if manifest.requirements:
        say(f"installing {len(manifest.requirements)} requirement(s)")
        _install_requirements(manifest.requirements, site)
    staging = _stage(work / "stage", _entry_module(manifest))
    say("checking sources and entry point")
    check_entry(directory, manifest, [staging, site])

    say("compiling with componentize-py")
    partial = output.with_suffix(".wasm.partial")
    _componentize(_WORLD, [staging, directory], deps, partial)
    os.replace(partial, output)
    sha256 = hashlib.sha256(output.read_bytes()).hexdigest()
    stamp.write_text(json.dumps({"source": source_hash, "sha256": sha256}))
    seconds = time.perf_counter() - started
    return BuildResult(manifest, output, sha256, output.stat().st_size, seconds, cached=False)


@dataclass(frozen=True)
class DevRunner:
    """The dev runner component, and what a function imports beside its own
    source: the SDK and the requirements it was built with."""

    wasm: Path
    python_path: list[Path]

    @cached_property
    def sha256(self) -> str:
        with self.wasm.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()


def build_dev_runner(
    requirements: tuple[str, ...], cache_dir: Path, progress: Progress | None = None
) -> DevRunner:
    """The dev runner with `requirements` installed, built once and kept under
    `cache_dir/dev-runner/`: for every function with the same requirements, until
    the SDK, the contract or componentize-py change."""
    digest = _toolchain_digest()
    digest.update(_DEV_ENTRY.encode() + "\0".join(sorted(requirements)).encode())
    work = cache_dir / "dev-runner" / digest.hexdigest()[:32]
    runner = DevRunner(
        work / "runner.wasm",
        [work / "stage", work / "deps" / "lib" / _GUEST_PYTHON / "site-packages"],
    )
    if runner.wasm.exists():
        return runner
    say = progress or (lambda _message: None)
    # Built aside and renamed whole: two `edgefn dev` (or tests) may build it at once.
    work.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{work.name}.", dir=work.parent))
    try:
        deps = scratch / "deps"
        site = deps / "lib" / _GUEST_PYTHON / "site-packages"
        site.mkdir(parents=True)
        if requirements:
            say(f"installing {len(requirements)} requirement(s)")
            _install_requirements(requirements, site)
        staging = _stage(scratch / "stage", _DEV_ENTRY)
        say("building it with componentize-py")
        _componentize(_DEV_WORLD, [staging], deps, scratch / "runner.wasm")
        try:
            scratch.rename(work)
        except OSError:
            if runner.wasm.exists():  # another build's, finished first
                return runner
            shutil.rmtree(work)  # what a copy or a crash left: not a build of ours
            scratch.rename(work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runner


def _entry_module(manifest: Manifest) -> str:
    return (
        f"from edgefn._guest import export\n"
        f"from {manifest.entry_module} import {manifest.entry_attribute} as _app\n"
        f"IncomingHandler = export(_app)\n"
    )


def _stage(staging: Path, entry: str) -> Path:
    """The SDK and the entry module (text `entry`), alone in their own folder.

    A copy, rather than the folder the SDK is installed in, so that nothing else
    installed beside it (wasmtime, click, ...) can be imported into a function.
    """
    shutil.rmtree(staging, ignore_errors=True)
    for package in _GUEST_PACKAGES:
        shutil.copytree(
            _package_dir(package),
            staging / package.__name__,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    (staging / f"{_ENTRY_MODULE}.py").write_text(entry)
    return staging


def _package_dir(package: ModuleType) -> Path:
    return Path(package.__file__ or "").resolve().parent


def _componentize(world: str, paths: list[Path], deps: Path, output: Path) -> None:
    with resources.as_file(resources.files("edgefn_contract.wit")) as wit:
        command = [_componentize_py(), "-d", str(wit), "-w", world, "componentize", _ENTRY_MODULE]
        for path in paths:
            command += ["-p", str(path)]
        command += ["-o", str(output)]
        # componentize-py appends $VIRTUAL_ENV's site-packages to the path; point it at
        # the function's own requirements so host packages never leak into a build.
        env = {**os.environ, "VIRTUAL_ENV": str(deps)}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output.unlink(missing_ok=True)
        raise BuildError("componentize-py failed:\n" + _summarise(result.stderr or result.stdout))


def _componentize_py() -> str:
    beside_python = Path(sys.executable).with_name("componentize-py")
    found = str(beside_python) if beside_python.exists() else shutil.which("componentize-py")
    if found is None:
        raise BuildError("componentize-py is not installed; `pip install componentize-py==0.25.*`")
    return found


def check_entry(
    directory: Path, manifest: Manifest, path: list[Path], timeout: float = 120
) -> None:
    """Compile the function's sources and import its entry natively, in a child
    process, with only `path` beside it; `BuildError` says what is wrong, and where,
    or that the import took over `timeout` seconds."""
    # -S: no site-packages, so the function sees what it will see as a component;
    # -B: no __pycache__ left in the function's folder (-I ignores PYTHON* variables).
    command = [
        sys.executable,
        "-I",
        "-S",
        "-B",
        str(_CHECK_SCRIPT),
        str(directory),
        manifest.entry,
        *map(str, path),
    ]
    env = {"PATH": os.environ.get("PATH", ""), **manifest.env}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"importing entry module {manifest.entry_module!r} took over {timeout:g} s "
            "(a loop at module level?)"
        ) from None
    if result.returncode != 0:
        raise BuildError(result.stdout.strip() or _summarise(result.stderr))


def _install_requirements(requirements: tuple[str, ...], site: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(site),
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError("installing requirements failed:\n" + _summarise(result.stderr))
    native = _native_distributions(site)
    if native:
        raise BuildError(
            "requirements with native extensions cannot run inside WebAssembly: "
            + ", ".join(native)
            + ". edgefn bundles pure-Python packages only; pick a pure-Python alternative "
            "or move that work into a host capability."
        )


def _native_distributions(site: Path) -> list[str]:
    native = []
    for wheel in sorted(site.glob("*.dist-info/WHEEL")):
        fields = dict(
            line.split(": ", 1) for line in wheel.read_text().splitlines() if ": " in line
        )
        if fields.get("Root-Is-Purelib", "true").strip().lower() != "true":
            tag = fields.get("Tag", "?").strip()
            native.append(f"{wheel.parent.name.removesuffix('.dist-info')} (wheel tag {tag})")
    return native


def _source_hash(directory: Path, manifest: Manifest) -> str:
    """What a build reads: the source, and of the manifest only the entry, the
    requirements and the environment the entry check imports with. A change of
    limits, route, grants or reuse deploys the component already built (a build is
    ~10 s, and a new component's compile as long again)."""
    digest = _toolchain_digest()
    inputs = {"entry": manifest.entry, "requirements": manifest.requirements, "env": manifest.env}
    digest.update(json.dumps(inputs, sort_keys=True).encode() + b"\0")
    for path in source_files(directory):
        if path == directory / MANIFEST_FILE:
            continue
        name = f"fn/{path.relative_to(directory)}"
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _toolchain_digest() -> hashlib._Hash:
    """A digest of what every component is built with besides the function: the
    SDK, the contract and componentize-py."""
    digest = hashlib.sha256()
    digest.update(f"componentize-py={version('componentize-py')}\n".encode())
    wit = resources.files("edgefn_contract.wit")
    inputs = []
    for package in _GUEST_PACKAGES:
        root = _package_dir(package)
        files = sorted(root.rglob("*.py"))
        inputs += [(f"{package.__name__}/{p.relative_to(root)}", p) for p in files]
    for name, path in inputs:
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for entry in sorted(wit.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".wit"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return digest


def source_files(directory: Path) -> list[Path]:
    """The function's files a build reads (not its tests, build output or dot-folders)."""
    files = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))
        files += [Path(root) / n for n in sorted(names) if not n.endswith((".pyc", ".wasm"))]
    return files


def _read_stamp(stamp: Path) -> dict[str, str]:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _summarise(output: str, lines: int = 15) -> str:
    # componentize-py appends a native backtrace; the Python part is what helps.
    text = output.split("\nStack backtrace:")[0].rstrip()
    return "\n".join(text.splitlines()[-lines:])
