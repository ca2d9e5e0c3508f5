"""Deploy: upload -> validate -> AOT compile -> store -> activate, all or nothing."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edgefn_runtime import EdgefnError, Engine, Sandbox

from .._crash import crash_point
from ..manifest import MANIFEST_FILE, Manifest, parse_manifest
from ..registry import Blob, CorruptArtifact, Registry, StorageFull, VersionRecord

__all__ = [
    "Deployer",
    "InvalidAssets",
    "StorageFull",
    "deploy_directory",
    "pack_assets",
    "recover",
]


class InvalidAssets(EdgefnError, ValueError):
    """The assets archive is not a gzip'd tar of regular files and folders."""

    code = "invalid_assets"
    status = 400


# Below the data directory: unpacked assets by sha256, and each deploy's scratch folder.
_ASSETS, _SCRATCH = "assets", "tmp"
_ARCHIVE = "assets.tar.gz"

# What an assets archive may unpack to: checked from its headers before extracting.
MAX_ASSETS_BYTES = 256 * 1024 * 1024
MAX_ASSETS_FILES = 10_000
# What its gzip stream may inflate to: the files, and each one's header and padding
# (about 2 KiB with a long name). Past it the stream is a bomb, refused after that
# much inflating (a fraction of a second) rather than after all of it.
_MAX_INFLATED = MAX_ASSETS_BYTES + MAX_ASSETS_FILES * 4096
# tarfile reads a header's own data (a long name, pax records) into memory whole,
# in one read; real ones are a few hundred bytes, and file data is read 16 KiB at
# a time. A header claiming gigabytes is refused before it is read.
_MAX_READ = 1024 * 1024


# What makes two loads of a component the same sandbox: its bytes, its assets, the
# environment it sees and how often an instance is reused.
_SandboxKey = tuple[str, str | None, tuple[tuple[str, str], ...], int]


def _sandbox_key(sha256: str, manifest: Manifest, assets_sha: str | None) -> _SandboxKey:
    return (sha256, assets_sha, tuple(sorted(manifest.env.items())), manifest.reuse)


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
        self, manifest_text: str, component: BinaryIO, assets: BinaryIO | None = None
    ) -> VersionRecord:
        """Validate and compile before anything is stored; the registry then stores
        the artifact and activates the version in one transaction. A failure or a
        crash at any step leaves the previous version serving."""
        try:
            return self._deploy(manifest_text, component, assets)
        except OSError as exc:
            # The registry raises StorageFull itself; this is for the upload, the
            # assets and the AOT cache this module writes in the data directory.
            if exc.errno == errno.ENOSPC:
                raise StorageFull() from None
            raise

    def _deploy(
        self, manifest_text: str, component: BinaryIO, assets: BinaryIO | None
    ) -> VersionRecord:
        manifest = parse_manifest(manifest_text, source="edgefn.toml")
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch_dir) as temp:
            wasm = Path(temp) / "component.wasm"
            sha256 = _copy_hashing(component, wasm)
            crash_point("deploy:uploaded")
            assets_sha = self._unpack_assets(assets, Path(temp)) if assets else None
            if manifest.assets and assets_sha is None:
                raise InvalidAssets(
                    f"the manifest names assets {manifest.assets!r}, "
                    "but no assets archive was uploaded"
                )
            assets_path = self.assets_dir / assets_sha if assets_sha else None
            # Loading validates the contract and compiles into the shared AOT cache;
            # the sandbox then serves on this worker (no second load). The bytes were
            # hashed on their way to disk, once.
            sandbox = self.engine.load(
                wasm, env=manifest.env, assets=assets_path, reuse=manifest.reuse, sha256=sha256
            )
            key = _sandbox_key(sha256, manifest, assets_sha)
            crash_point("deploy:compiled")
            stored = manifest.to_dict() | {"assets_sha256": assets_sha}
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
            assets_sha = version.manifest.get("assets_sha256")
            version = _sandbox_key(version.sha256, manifest, assets_sha)
        return self.handoff.pop(version, None)

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
        unpacked.mkdir()  # also for an empty archive: an empty assets folder
        try:
            with gzip.open(data, "rb") as stream:
                inflated = _Inflated(stream)
                with tarfile.open(fileobj=inflated, mode="r:") as tar:  # type: ignore[call-overload]
                    members = _checked_members(tar)
                    tar.extractall(unpacked, members=members, filter="data")
                inflated.verify_trailer()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if getattr(exc, "errno", None) == errno.ENOSPC:
                raise
            raise InvalidAssets(f"the assets archive cannot be unpacked: {exc}") from None
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


def pack_assets(directory: Path, archive: Path) -> None:
    """The archive `Deployer` expects: a gzip'd tar of `directory`'s regular files and
    folders (a file hard-linked to another is stored as a copy of it). A symlink or
    special file in it raises InvalidAssets, as the gateway would refuse it."""
    # The same folder packs to the same bytes (no time in the gzip header), so
    # deploying it again (every `serve --deploy`) adds no version. dereference: no
    # hard-link members (symlinks are refused below, not followed).
    with (
        archive.open("wb") as file,
        gzip.GzipFile(filename="", mode="wb", fileobj=file, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", dereference=True) as tar,
    ):
        for path in sorted(directory.rglob("*")):
            name = str(path.relative_to(directory))
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InvalidAssets(_not_plain(name, _kind_of_mode(mode)))
            tar.add(path, arcname=name, recursive=False)


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members, read header by header and each checked before the
    next is read: regular files and folders only, inside the assets folder, within
    the limits. Nothing is unpacked before they all pass."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        name = PurePosixPath(member.name)
        if not (member.isreg() or member.isdir()):
            raise InvalidAssets(_not_plain(member.name, _kind_of_member(member)))
        if name.is_absolute():
            raise InvalidAssets(f"assets archive member {member.name!r} is an absolute path")
        if ".." in name.parts:
            raise InvalidAssets(
                f"assets archive member {member.name!r} climbs out of the assets folder with '..'"
            )
        members.append(member)
        total += member.size
        if len(members) > MAX_ASSETS_FILES:
            raise InvalidAssets(f"the assets archive holds more than {MAX_ASSETS_FILES} files")
        if total > MAX_ASSETS_BYTES:
            raise InvalidAssets(
                f"the assets unpack to more than {MAX_ASSETS_BYTES} bytes (256 MiB)"
            )
    return members


def _not_plain(name: str, kind: str) -> str:
    return (
        f"assets archive member {name!r} is a {kind}: an assets archive holds regular "
        "files and folders only"
    )


def _kind_of_member(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return f"member of tar type {member.type!r}"


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


class _Inflated:
    """An assets archive's gzip stream, inflated as tarfile reads it, within bounds:
    InvalidAssets past `_MAX_INFLATED` bytes or for a read over `_MAX_READ`."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= _MAX_READ:
            raise InvalidAssets(
                f"the assets archive has a header of {size} bytes (a name or pax "
                f"records; at most {_MAX_READ})"
            )
        self._within(self._stream.tell() + size)
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._stream.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("seek from the end of a gzip stream")
        self._within(offset)
        return self._stream.seek(offset)

    def tell(self) -> int:
        return self._stream.tell()

    def verify_trailer(self) -> None:
        """Inflate what follows the tar's end, to the gzip trailer, whose checksum
        gzip then checks: tarfile stops at the end marker, and a damaged stored
        block is caught by the checksum alone."""
        while self.read(_MAX_READ):
            pass

    def _within(self, position: int) -> None:
        if position > _MAX_INFLATED:
            raise InvalidAssets(f"the assets archive inflates to more than {_MAX_INFLATED} bytes")


def _copy_hashing(source: BinaryIO, target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def deploy_directory(deployer: Deployer, directory: Path, wasm: Path) -> VersionRecord:
    """Deploy a built function folder in-process (`edgefn serve --deploy`, `edgefn dev`)."""
    manifest_text = (directory / MANIFEST_FILE).read_text(encoding="utf-8")
    manifest = parse_manifest(manifest_text)
    with tempfile.TemporaryDirectory() as temp, wasm.open("rb") as component:
        if manifest.assets is None:
            return deployer.deploy(manifest_text, component)
        archive = Path(temp) / "assets.tar.gz"
        pack_assets(directory / manifest.assets, archive)
        with archive.open("rb") as assets:
            return deployer.deploy(manifest_text, component, assets)
