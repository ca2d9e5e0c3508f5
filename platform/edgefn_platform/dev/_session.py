"""`edgefn dev`'s functions: each served by the dev runner from a snapshot of
its source folder, published again on every change.

A publish is a deploy to the dev gateway's own registry: the runner's bytes
(compiled once, from the AOT cache), the manifest as it is now, and the new
snapshot (`Deployer.deploy(dev_source=)`). The worker swaps it in as it swaps
any version, so requests in flight finish on the code they started with, and
serves it with the same sandbox, limits and capabilities as a deployed function.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefn_runtime import EdgefnError, Engine

from ..builder import BuildError, DevRunner, build_dev_runner, check_entry
from ..gateway import Deployer, GatewayConfig, pack_assets
from ..gateway._rollout import ServingBoard
from ..manifest import MANIFEST_FILE, Manifest, load_manifest, read_manifest
from ..registry import Registry, VersionRecord
from ..secrets import Cipher
from ._local import SECRETS_FILE, DevError, read_secrets
from ._snapshots import Snapshot, Snapshots

__all__ = ["DevFunction", "DevSession", "prepare_runner"]

Say = Callable[[str, str | None], None]
"""Prints a line, in a colour (click's names) or the terminal's own (None)."""

_LIVE_TIMEOUT = 30.0
# The native check of a save: longer means a loop at module level, not an import.
_CHECK_TIMEOUT = 10.0


@dataclass
class DevFunction:
    """A function folder `edgefn dev` serves."""

    directory: Path
    manifest: Manifest
    runner: DevRunner
    # The digest of the source served now, and its snapshot (before the first publish:
    # "" and None).
    served: str = ""
    snapshot: Path | None = None
    # The digest of the assets last packed for a deploy (None: none packed).
    packed: str | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    def owns(self, path: Path) -> bool:
        return path == self.directory or self.directory in path.parents


class DevSession:
    """The functions of one `edgefn dev`, published to `registry` for its worker;
    their secrets from `secrets` (`--secret`) and each one's local file, stored
    with `cipher`."""

    def __init__(
        self,
        directories: Iterable[Path],
        config: GatewayConfig,
        registry: Registry,
        deployer: Deployer,
        say: Say,
        secrets: dict[str, str],
        cipher: Cipher,
    ) -> None:
        self.config = config
        self.registry = registry
        self.deployer = deployer
        self.board = ServingBoard(config.workers_dir)
        self.say = say
        self.secrets = secrets
        self.cipher = cipher
        self.snapshots = Snapshots(config.data_dir / "sources")
        self._packed_dir = config.data_dir / "assets-packed"
        # (function, secret) -> the value stored; and those set nowhere, said once.
        self._stored: dict[tuple[str, str], str] = {}
        self._unset: set[tuple[str, str]] = set()
        self.functions = [self._open(d) for d in directories]
        _check_unique(self.functions)
        declared = {name for f in self.functions for name in f.manifest.secrets}
        for name in sorted(secrets.keys() - declared):
            say(f"--secret {name}: no function's manifest declares it", "yellow")
        for function in self.functions:
            self._store_secrets(function)
        # The native check of each function's latest save, off the path to serving it:
        # one at a time, on a daemon thread that never holds up an exit.
        self._checks: dict[str, tuple[DevFunction, Path]] = {}
        self._checks_waiting = threading.Condition()
        threading.Thread(target=self._run_checks, name="edgefn-dev-check", daemon=True).start()

    def _open(self, directory: Path) -> DevFunction:
        manifest = load_manifest(directory)
        return DevFunction(directory, manifest, self._runner(manifest))

    def _runner(self, manifest: Manifest) -> DevRunner:
        return prepare_runner(manifest, self.deployer.engine, self.say)

    def _store_secrets(self, function: DevFunction) -> None:
        """Store the secrets `function` declares, from its local file, then from
        `--secret` (which wins); remove those no longer set; say which are set nowhere.
        The worker sees the change at its next poll, without a new version."""
        values = read_secrets(function.directory) | self.secrets
        for name in function.manifest.secrets:
            key = (function.name, name)
            if name in values:
                if self._stored.get(key) != values[name]:
                    value = self.cipher.encrypt(values[name])
                    self.registry.set_secret(function.name, name, value)
                    self._stored[key] = values[name]
                self._unset.discard(key)
            elif key not in self._unset:
                if key in self._stored:
                    self.registry.delete_secret(function.name, name)
                    del self._stored[key]
                self._unset.add(key)
                self.say(
                    f"{function.name}: secret {name} is not set (--secret {name}=... or "
                    f"{function.directory / SECRETS_FILE})",
                    "yellow",
                )

    def publish_all(self) -> None:
        for function in self.functions:
            self.publish(function)

    def catch_up(self) -> None:
        """Store the secrets and publish the source of every function as they are
        now: what was saved before the watcher was set up."""
        for function in self.functions:
            self._read_secrets_again(function)
            self.publish(function)

    def changed(self, paths: Iterable[Path]) -> None:
        """Publish each function a changed path belongs to; store again the secrets
        of each whose local secrets file changed."""
        changed = set(paths)
        for function in self.functions:
            mine = {p for p in changed if function.owns(p)}
            secrets_file = function.directory / SECRETS_FILE
            if secrets_file in mine and self._read_secrets_again(function):
                self.say(f"{function.name}: secrets read again from {secrets_file}", None)
            if mine - {secrets_file}:
                self.publish(function)

    def _read_secrets_again(self, function: DevFunction) -> bool:
        """`_store_secrets`, an error said in red (the values stored stay); whether it
        worked."""
        try:
            self._store_secrets(function)
        except (EdgefnError, OSError) as exc:
            self.say(f"{function.name}: {exc}", "red")
            return False
        return True

    def publish(self, function: DevFunction) -> VersionRecord | None:
        """Snapshot `function`'s folder and serve it; None if it did not change, or
        could not be published (said in red: the previous version keeps serving)."""
        started = time.perf_counter()
        try:
            text, manifest = read_manifest(function.directory)
            if manifest.name != function.name:
                raise DevError(
                    f"{function.directory / MANIFEST_FILE}: the name changed from "
                    f"{function.name!r} to {manifest.name!r}; restart `edgefn dev`"
                )
            # Compared as the runner's cache key does: a new order is the same runner.
            if sorted(manifest.requirements) != sorted(function.manifest.requirements):
                self.say(f"{manifest.name}: requirements changed: a full build", "yellow")
                function.runner = self._runner(manifest)
            secrets_changed = manifest.secrets != function.manifest.secrets
            function.manifest = manifest
            if secrets_changed:
                self._store_secrets(function)
            snapshot = self.snapshots.take(function.directory, manifest)
            if snapshot.digest == function.served:
                return None
            version = self._deploy(function, text, snapshot)
            self._wait_live(version)
        except (EdgefnError, OSError, UnicodeError) as exc:
            # Whatever the folder holds, the watch goes on: the next save may fix it.
            self.say(f"{function.name}: {exc}", "red")
            return None
        if function.snapshot is not None:
            self.snapshots.replaced(function.snapshot)
        function.served, function.snapshot = snapshot.digest, snapshot.path
        seconds = time.perf_counter() - started
        self.say(
            f"Serving {version.function} (version {version.version}) at "
            f"{self.config.public_url()}{version.route} ({seconds * 1000:.0f} ms)",
            "green",
        )
        with self._checks_waiting:
            self._checks[function.name] = (function, snapshot.path)
            self._checks_waiting.notify()
        return version

    def _deploy(self, function: DevFunction, text: str, snapshot: Snapshot) -> VersionRecord:
        """The dev runner, as it is (hashed once), with the manifest `text` and the
        snapshot."""
        runner = function.runner
        with self._pack(function, snapshot.assets) as assets:
            return self.deployer.deploy(
                text, runner.wasm, assets, sha256=runner.sha256, dev_source=snapshot.path
            )

    def _pack(
        self, function: DevFunction, digest: str | None
    ) -> AbstractContextManager[BinaryIO | None]:
        """The function's assets archive (none without assets), packed again only when
        they changed: a save of its source deploys the same archive (which the
        deployer unpacks once)."""
        folder = function.manifest.assets
        if folder is None or digest is None:
            return nullcontext()
        archive = self._packed_dir / f"{function.name}.tar.gz"
        if function.packed != digest:
            function.packed = None  # until the archive is whole
            self._packed_dir.mkdir(exist_ok=True)
            pack_assets(function.directory / folder, archive)
            function.packed = digest
        return archive.open("rb")

    def _wait_live(self, version: VersionRecord) -> None:
        """Until the worker serves `version` (when it runs: not before it starts)."""
        if not self.board.workers():
            return
        generation = self.registry.change_token()
        change = f"{version.function} version {version.version}"
        self.board.wait_until_live(generation, 1, version.function, change, _LIVE_TIMEOUT)

    def wait_all_live(self) -> None:
        """Until the worker, just started, serves every function (or says which it
        could not load)."""
        generation = self.registry.change_token()
        for function in self.functions:
            self.board.wait_until_live(generation, 1, function.name, function.name, _LIVE_TIMEOUT)

    def _run_checks(self) -> None:
        while True:
            with self._checks_waiting:
                while not self._checks:
                    self._checks_waiting.wait()
                _, (function, snapshot) = self._checks.popitem()
            # The snapshot, as a build would: what its next request would show.
            try:
                check_entry(
                    snapshot, function.manifest, function.runner.python_path, _CHECK_TIMEOUT
                )
            except (BuildError, OSError) as exc:
                self.say(f"{function.name}: {exc}", "red")


def prepare_runner(manifest: Manifest, engine: Engine, say: Say) -> DevRunner:
    """The dev runner with `manifest`'s requirements, compiled by `engine` into its
    AOT cache: made (saying so, step by step) unless cached."""
    started = time.perf_counter()
    steps: list[str] = []

    def progress(message: str) -> None:
        if not steps:
            with_ = ", ".join(manifest.requirements)
            detail = f" with {with_}" if with_ else ""
            say(f"{manifest.name}: making the dev runner{detail} (once) ...", None)
        steps.append(message)
        say(f"  {message}", None)

    runner = build_dev_runner(manifest.requirements, engine.aot.directory.parent, progress)
    sha256 = runner.sha256
    if not engine.aot.path_for(sha256).exists():  # Cranelift, ~12 s: once per machine
        progress("compiling the dev runner for this machine")
        engine.load(runner.wasm, sha256=sha256)
    if steps:
        say(f"  done in {time.perf_counter() - started:.1f} s", None)
    return runner


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
