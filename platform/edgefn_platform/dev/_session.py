"""`edgefn dev`'s functions: each served by the dev runner from a snapshot of
its source folder, published again on every change.

A publish is a deploy to the dev gateway's own registry: the runner's bytes
(compiled once, from the AOT cache), the manifest as it is now, and the new
snapshot (`Deployer.deploy(dev_source=)`). The worker swaps it in as it swaps
any version, so requests in flight finish on the code they started with, and
serves it with the same sandbox, limits and capabilities as a deployed function.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgefn_runtime import EdgefnError

from ..builder import BuildError, DevRunner, build_dev_runner, check_entry, source_files
from ..gateway import Deployer, GatewayConfig, deploy_directory
from ..gateway._rollout import ServingBoard
from ..manifest import MANIFEST_FILE, Manifest, load_manifest
from ..registry import Registry, VersionRecord
from ..secrets import Cipher
from ._local import DevError, read_secrets

__all__ = ["DevFunction", "DevSession"]

Say = Callable[[str, str | None], None]
"""Prints a line, in a colour (click's names) or the terminal's own (None)."""

# Snapshots kept per function: the one served and the one before, which requests
# that started before the swap may still be importing from.
_KEPT_SNAPSHOTS = 2
_LIVE_TIMEOUT = 30.0


@dataclass
class DevFunction:
    """A function folder `edgefn dev` serves."""

    directory: Path
    manifest: Manifest
    runner: DevRunner
    # The digest of the source the function serves now ("" before the first publish).
    served: str = ""

    def owns(self, path: Path) -> bool:
        return path == self.directory or self.directory in path.parents


class DevSession:
    """The functions of one `edgefn dev`, published to `registry` for its worker."""

    def __init__(
        self,
        directories: Iterable[Path],
        config: GatewayConfig,
        registry: Registry,
        deployer: Deployer,
        say: Say,
    ) -> None:
        self.config = config
        self.registry = registry
        self.deployer = deployer
        self.board = ServingBoard(config.workers_dir)
        self.say = say
        self.functions = [self._open(d) for d in directories]
        _check_unique(self.functions)
        # The native check of each publish, off the path to serving it.
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="edgefn-dev-check")

    def close(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)

    def _open(self, directory: Path) -> DevFunction:
        manifest = load_manifest(directory)
        return DevFunction(directory, manifest, self._runner(manifest))

    def _runner(self, manifest: Manifest) -> DevRunner:
        """The dev runner with `manifest`'s requirements: built (saying so) unless cached."""
        started = time.perf_counter()
        built: list[str] = []

        def progress(message: str) -> None:
            if not built:
                with_ = ", ".join(manifest.requirements)
                detail = f" with {with_}" if with_ else ""
                self.say(f"{manifest.name}: making the dev runner{detail} (once) ...", None)
            built.append(message)
            self.say(f"  {message}", None)

        runner = build_dev_runner(manifest.requirements, self.config.aot_cache_dir, progress)
        engine = self.deployer.engine
        sha256 = runner.sha256()
        if not engine.aot.path_for(sha256).exists():  # Cranelift, ~10 s: once per machine
            progress("compiling the dev runner for this machine")
            engine.load(runner.wasm, sha256=sha256)
        if built:
            self.say(f"  done in {time.perf_counter() - started:.1f} s", None)
        return runner

    def set_secrets(self, given: dict[str, str], cipher: Cipher) -> None:
        """Store the secrets of each function, from its local file then `given`
        (`--secret`, which wins)."""
        declared: set[str] = set()
        for function in self.functions:
            values = read_secrets(function.directory) | given
            for name in function.manifest.secrets:
                declared.add(name)
                if name in values:
                    self.registry.set_secret(
                        function.manifest.name, name, cipher.encrypt(values[name])
                    )
                else:
                    self.say(
                        f"{function.manifest.name}: secret {name} is not set "
                        f"(--secret {name}=... or {function.directory}/.edgefn/dev-secrets)",
                        "yellow",
                    )
        for name in sorted(given.keys() - declared):
            self.say(f"--secret {name}: no function's manifest declares it", "yellow")

    def publish_all(self) -> None:
        for function in self.functions:
            self.publish(function)

    def changed(self, paths: Iterable[Path]) -> None:
        """Publish each function a changed path belongs to."""
        touched = {id(f): f for p in paths for f in self.functions if f.owns(p)}
        for function in touched.values():
            self.publish(function)

    def publish(self, function: DevFunction) -> VersionRecord | None:
        """Snapshot `function`'s source and serve it; None if it did not change, or
        could not be published (said in red: the previous version keeps serving)."""
        started = time.perf_counter()
        try:
            manifest = load_manifest(function.directory)
            if manifest.requirements != function.manifest.requirements:
                self.say(f"{manifest.name}: requirements changed: a full build", "yellow")
                function.runner = self._runner(manifest)
            if manifest.name != function.manifest.name:
                raise DevError(
                    f"{function.directory / MANIFEST_FILE}: the name changed from "
                    f"{function.manifest.name!r} to {manifest.name!r}; restart `edgefn dev`"
                )
            function.manifest = manifest
            digest, snapshot = self._snapshot(function)
            if digest == function.served:
                return None
            version = deploy_directory(
                self.deployer, function.directory, function.runner.wasm, dev_source=snapshot
            )
            self._wait_live(version)
        except EdgefnError as exc:
            self.say(f"{function.directory.name}: {exc}", "red")
            return None
        function.served = digest
        self._prune(snapshot.parent, keep=digest)
        seconds = time.perf_counter() - started
        self.say(
            f"Serving {version.function} (version {version.version}) at "
            f"{self.config.public_url()}{version.route} ({seconds * 1000:.0f} ms)",
            "green",
        )
        self._checks.submit(self._check, function, snapshot)
        return version

    def _snapshot(self, function: DevFunction) -> tuple[str, Path]:
        """A copy of the function's source (not its assets, which are deployed as
        assets), in a folder named by its digest; the digest and the folder."""
        directory = function.directory
        assets = directory / function.manifest.assets if function.manifest.assets else None
        files = [p for p in source_files(directory) if assets is None or assets not in p.parents]
        digest = hashlib.sha256(function.manifest.entry.encode() + b"\0")
        contents = []
        for path in files:
            data = path.read_bytes()
            relative = path.relative_to(directory)
            digest.update(str(relative).encode() + b"\0" + data + b"\0")
            contents.append((relative, data))
        name = digest.hexdigest()[:20]
        root = self.config.data_dir / "sources" / function.manifest.name
        target = root / name
        if not target.is_dir():
            partial = root / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            for relative, data in contents:
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                (partial / relative).write_bytes(data)
            partial.mkdir(parents=True, exist_ok=True)  # a function of no files
            partial.rename(target)
        return name, target

    def _prune(self, root: Path, keep: str) -> None:
        """Remove snapshots but the newest few (`keep` among them)."""
        snapshots = sorted(
            (p for p in root.iterdir() if not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        kept = {keep} | {p.name for p in snapshots[:_KEPT_SNAPSHOTS]}
        for path in snapshots:
            if path.name not in kept:
                shutil.rmtree(path, ignore_errors=True)

    def _wait_live(self, version: VersionRecord) -> None:
        """Until the worker serves `version` (when it runs: not before it starts)."""
        if not self.board.workers():
            return
        generation = self.registry.change_token()
        change = f"{version.function} version {version.version}"
        self.board.wait_until_live(generation, 1, version.function, change, _LIVE_TIMEOUT)

    def wait_all_live(self) -> None:
        """Until the worker, just started, serves every function."""
        generation = self.registry.change_token()
        names = ", ".join(f.manifest.name for f in self.functions)
        self.board.wait_until_live(generation, 1, "", names, _LIVE_TIMEOUT)

    def _check(self, function: DevFunction, snapshot: Path) -> None:
        """Import the `snapshot` natively as a build would, to say in the terminal
        at once what its next request would show (a syntax or import error)."""
        try:
            check_entry(snapshot, function.manifest, function.runner.python_path)
        except BuildError as exc:
            self.say(f"{function.manifest.name}: {exc}", "red")


def _check_unique(functions: list[DevFunction]) -> None:
    for attribute in ("name", "route"):
        seen: dict[str, Path] = {}
        for function in functions:
            value = getattr(function.manifest, attribute)
            if value in seen:
                raise DevError(
                    f"{seen[value]} and {function.directory} both have the {attribute} "
                    f"{value!r}; each function `edgefn dev` serves needs its own"
                )
            seen[value] = function.directory
