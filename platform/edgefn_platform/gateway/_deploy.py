"""Deploy: upload -> validate -> AOT compile -> store -> activate, all or nothing."""

from __future__ import annotations

import errno
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from edgefn_runtime import Engine, Sandbox
from edgefn_runtime.capabilities import DevSource

from .._crash import crash_point
from ..manifest import MANIFEST_FILE, Manifest, parse_manifest
from ..registry import Blob, CorruptArtifact, Registry, StorageFull, VersionRecord
from ._assets import InvalidAssets, pack_assets, unpack_assets

__all__ = ["Deployer", "StorageFull", "deploy_directory", "recover"]


# Below the data directory: unpacked assets by sha256, and each deploy's scratch folder.
_ASSETS, _SCRATCH = "assets", "tmp"
_ARCHIVE = "assets.tar.gz"
# A full disk or quota while writing the upload, the assets or the AOT cache.
_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT}


# What makes two loads of a component the same sandbox: its bytes, its assets, the
# environment it sees, how often an instance is reused and its grants (the
# function's name, whose key-value stores and secrets it reaches, and what it
# may reach, and under `edgefn dev` its source): two deploys of the same bytes as
# two functions are two sandboxes.
_SandboxKey = tuple[
    str,
    str | None,
    tuple[tuple[str, str], ...],
    int,
    tuple[str, ...],
    str,
    tuple[str, ...],
    tuple[str, ...],
    str | None,
]


def _sandbox_key(sha256: str, manifest: Manifest, stored: dict[str, Any]) -> _SandboxKey:
    return (
        sha256,
        stored.get("assets_sha256"),
        tuple(sorted(manifest.env.items())),
        manifest.reuse,
        manifest.outbound_hosts(),
        manifest.name,
        tuple(sorted(manifest.key_value_stores)),
        tuple(sorted(manifest.secrets)),
        stored.get("dev_source"),
    )


def _grants(manifest: Manifest, stored: dict[str, Any]) -> dict[str, Any]:
    """The manifest's grants and, for a version `edgefn dev` deployed, its source
    (which only `edgefn dev`'s engine has a capability to mount)."""
    grants = manifest.grants()
    if stored.get("dev_source"):
        grants["dev"] = DevSource(Path(stored["dev_source"]), manifest.entry)
    return grants


@dataclass
class Deployer:
    registry: Registry
    engine: Engine
    data_dir: Path
    # Set in a worker: the sandbox each deploy loaded waits here, from before its
    # version is committed, for the worker's table to take (`take_loaded`), so the
    # version is not loaded twice, whichever thread (the handler's refresh, or the
    # one a PostgreSQL notification wakes) gets to it first.
    handoff: dict[_SandboxKey, Sandbox] | None = None

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / _ASSETS

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / _SCRATCH

    def deploy(
        self,
        manifest_text: str,
        component: BinaryIO | Path,
        assets: BinaryIO | None = None,
        *,
        sha256: str | None = None,
        dev_source: Path | None = None,
    ) -> VersionRecord:
        """Validate and compile before anything is stored; the registry then stores
        the artifact and activates the version in one transaction. A failure or a
        crash at any step leaves the previous version serving.

        `component`: an upload, copied and hashed on its way to disk; or a file of
        this host's that nothing rewrites, read where it is, with its `sha256`:
        `edgefn dev` hashes its 39 MB runner once, not at every save (an edit was live
        in a median 104-106 ms, against 171-179 copying and hashing it, 2 runs each).
        `dev_source`: a snapshot of the function's folder, for `edgefn dev`'s dev
        runner (never the admin API)."""
        try:
            return self._deploy(manifest_text, component, assets, sha256, dev_source)
        except OSError as exc:
            # The registry raises StorageFull itself; this is for the upload, the
            # assets and the AOT cache this module writes in the data directory.
            if exc.errno in _FULL_ERRORS:
                raise StorageFull() from None
            raise

    def _deploy(
        self,
        manifest_text: str,
        component: BinaryIO | Path,
        assets: BinaryIO | None,
        sha256: str | None,
        dev_source: Path | None,
    ) -> VersionRecord:
        manifest = parse_manifest(manifest_text, source="edgefn.toml")
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch_dir) as temp:
            if isinstance(component, Path) != (sha256 is not None):
                raise ValueError("a file of this host's is deployed with its sha256, and only it")
            if isinstance(component, Path):
                wasm = component
            else:
                wasm = Path(temp) / "component.wasm"
                sha256 = _copy_hashing(component, wasm)
            assert sha256 is not None
            crash_point("deploy:uploaded")
            assets_sha = self._unpack_assets(assets, Path(temp)) if assets else None
            if manifest.assets and assets_sha is None:
                raise InvalidAssets(
                    f"the manifest names assets {manifest.assets!r}, "
                    "but no assets archive was uploaded"
                )
            assets_path = self.assets_dir / assets_sha if assets_sha else None
            stored = manifest.to_dict() | {"assets_sha256": assets_sha}
            if dev_source is not None:
                stored["dev_source"] = str(dev_source)
            # Loading validates the contract and compiles into the shared AOT cache;
            # the sandbox then serves on this worker (no second load). The bytes were
            # hashed once.
            sandbox = self.engine.load(
                wasm,
                env=manifest.env,
                assets=assets_path,
                reuse=manifest.reuse,
                sha256=sha256,
                grants=_grants(manifest, stored),
            )
            key = _sandbox_key(sha256, manifest, stored)
            crash_point("deploy:compiled")
            # For gateways sharing the registry: they load this version without
            # compiling it again (seconds) or needing the upload.
            blobs = [Blob(self._compiled_key(sha256), self.engine.aot.path_for(sha256))]
            if assets_sha:
                blobs.append(Blob(f"assets/{assets_sha}", Path(temp) / _ARCHIVE))
            if self.handoff is not None:
                self.handoff[key] = sandbox
            try:
                return self.registry.deploy(
                    manifest.name, manifest.route, stored, wasm, sha256, blobs
                )
            except BaseException:
                self.take_loaded(key)
                raise

    def take_loaded(self, version: VersionRecord | _SandboxKey) -> Sandbox | None:
        """The sandbox a deploy in this process loaded for `version` (or its key), if
        it is still waiting: each is taken once. The deploy's caller takes what the
        table did not (a redeploy of the active version) so none is kept."""
        if self.handoff is None:
            return None
        if isinstance(version, VersionRecord):
            manifest = Manifest.from_dict(version.manifest)
            version = _sandbox_key(version.sha256, manifest, version.manifest)
        return self.handoff.pop(version, None)

    def grants(self, version: VersionRecord) -> dict[str, Any]:
        """What `version` may use of each capability (`Engine.load(grants=)`)."""
        return _grants(Manifest.from_dict(version.manifest), version.manifest)

    def _compiled_key(self, sha256: str) -> str:
        return f"compiled/{sha256}-{self.engine.aot.engine_key}"

    def local_files(self, version: VersionRecord) -> tuple[Path, Path | None]:
        """This gateway's copies of `version`'s component and unpacked assets, and
        its compiled artifact in the AOT cache: each fetched from the registry
        if another gateway deployed it."""
        wasm = self.registry.artifact_path(version.sha256)
        compiled = self.engine.aot.path_for(version.sha256)
        if not compiled.exists():
            self.registry.fetch(self._compiled_key(version.sha256), compiled)  # else: compile
        assets_sha = version.manifest.get("assets_sha256")
        if not assets_sha:
            return wasm, None
        target = self.assets_dir / assets_sha
        if not target.is_dir():
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.scratch_dir) as temp:
                archive = Path(temp) / _ARCHIVE
                if not self.registry.fetch(f"assets/{assets_sha}", archive):
                    raise CorruptArtifact(
                        f"the assets of {version.function} version {version.version} "
                        "are missing from the registry; deploy the function again"
                    )
                self._unpack(archive, Path(temp), assets_sha)
        return wasm, target

    def _unpack_assets(self, archive: BinaryIO, temp: Path) -> str:
        data = temp / _ARCHIVE
        sha256 = _copy_hashing(archive, data)
        if not (self.assets_dir / sha256).is_dir():
            self._unpack(data, temp, sha256)
        return sha256

    def _unpack(self, data: Path, temp: Path, sha256: str) -> None:
        """Check the archive `data` from its headers, unpack it in `temp`, then move
        it to `assets/<sha256>` (atomically: another worker may do the same)."""
        target = self.assets_dir / sha256
        unpacked = temp / "assets"
        unpack_assets(data, unpacked)
        self.assets_dir.mkdir(parents=True, exist_ok=True)
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # another worker unpacked the same archive first
                raise


def recover(registry: Registry, data_dir: Path) -> list[Path]:
    """Remove what a crash mid-deploy or mid-delete left behind: scratch files,
    unreferenced or half-written artifacts, unreferenced assets; the paths removed.
    Run it while no deploy is in flight (the gateway does, before its workers start)."""
    removed = registry.sweep()
    scratch, assets = data_dir / _SCRATCH, data_dir / _ASSETS
    if scratch.is_dir():
        for entry in scratch.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    used = {
        version.manifest.get("assets_sha256")
        for function in registry.functions()
        for version in registry.versions(function.name)
    }
    if assets.is_dir():
        for entry in assets.iterdir():
            if entry.name not in used:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def _copy_hashing(source: BinaryIO, target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def deploy_directory(deployer: Deployer, directory: Path, wasm: Path) -> VersionRecord:
    """Deploy a function folder built into `wasm` in-process (`edgefn serve --deploy`).
    Copied and hashed in one pass, as an upload is: a build may replace the file."""
    manifest_text = (directory / MANIFEST_FILE).read_text(encoding="utf-8")
    manifest = parse_manifest(manifest_text)
    with tempfile.TemporaryDirectory() as temp, wasm.open("rb") as component:
        if manifest.assets is None:
            return deployer.deploy(manifest_text, component)
        archive = Path(temp) / _ARCHIVE
        pack_assets(directory / manifest.assets, archive)
        with archive.open("rb") as assets:
            return deployer.deploy(manifest_text, component, assets)
