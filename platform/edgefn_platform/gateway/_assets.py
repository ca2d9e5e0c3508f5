"""Assets archives: packed reproducibly by the CLI, checked and unpacked by the
gateway. An archive comes from whoever holds the admin token and is trusted in
nothing: regular files and folders only, inside the assets folder, within bounds
of size, count and memory, each header checked before anything is unpacked (and
what follows the last member checked once it is, in the deploy's scratch folder)."""

from __future__ import annotations

import errno
import gzip
import io
import stat
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from edgefn_runtime import EdgefnError

__all__ = ["MAX_ASSETS_BYTES", "MAX_ASSETS_FILES", "InvalidAssets", "pack_assets", "unpack_assets"]


class InvalidAssets(EdgefnError, ValueError):
    """The assets archive is not a gzip'd tar of regular files and folders."""

    code = "invalid_assets"
    status = 400


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
_MAX_READ = 64 * 1024
# What one member's headers may hold. tarfile copies the pax records of a global
# header into every later member (a 0.9 MiB one with 80,000 keys cost 2.1 MiB a
# member, 21 GiB for 10,000 members); real archives carry a few keys (path, mtime,
# uid...) of a few hundred bytes, and names fit in PATH_MAX.
_MAX_PAX_KEYS, _MAX_PAX_BYTES, _MAX_NAME = 32, 8 * 1024, 4096
# Member names in messages: a name may be 4 KiB, a message needs its start.
_SHOWN_NAME = 200
# OSErrors the archive's own layout causes while unpacking it (a file named '.',
# a file where a folder of the same name is, a path component over 255 bytes):
# the client's to fix. Any other is the server's.
_LAYOUT_ERRORS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}


def unpack_assets(data: Path, unpacked: Path) -> None:
    """Check the gzip'd tar `data` from its headers and unpack it into the new
    folder `unpacked`. Raises InvalidAssets for what the archive is to blame for;
    any other OSError (a full disk included) is the caller's."""
    unpacked.mkdir()  # also for an empty archive: an empty assets folder
    try:
        with gzip.open(data, "rb") as stream:
            inflated = _Inflated(stream)
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=inflated, mode="r:", tarinfo=_CheckedInfo
            ) as tar:
                members = _checked_members(tar)
                # tarfile stops at the first header it cannot read, as if the
                # archive ended there: what follows must be the end marker.
                end = tar.offset
                tar.extractall(unpacked, members=members, filter="data")
            inflated.verify_end(end, members[-1].name if members else None)
    except InvalidAssets:
        raise
    except RecursionError:
        # tarfile reads a chain of extension headers (pax, long names) recursively.
        raise InvalidAssets(
            "the assets archive chains too many extension headers before a member"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        # ValueError: tarfile's parsing of crafted pax records (int() of junk).
        message = str(exc).replace(str(unpacked), "assets")
        raise InvalidAssets(f"the assets archive cannot be unpacked: {message}") from None
    except OSError as exc:
        if exc.errno not in _LAYOUT_ERRORS:
            raise  # ENOSPC/EDQUOT: storage full (`deploy`); any other, a bug of ours
        raise InvalidAssets(
            f"the assets archive cannot be unpacked: {exc.strerror} at member "
            f"{_shown(_member_of(exc, unpacked))}"
        ) from None


def pack_assets(directory: Path, archive: Path) -> None:
    """The archive `Deployer` expects: a gzip'd tar of `directory`'s regular files and
    folders (a file hard-linked to another is stored as a copy of it). A symlink or
    special file in it raises InvalidAssets, as the gateway would refuse it."""
    # The same folder packs to the same bytes (no time in the gzip header, no time,
    # owner or mode in the tar's: `_reproducible`), so deploying it again (every
    # `serve --deploy`, from any clone) adds no version. dereference: no
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
            tar.add(path, arcname=name, recursive=False, filter=_reproducible)


def _reproducible(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What of a file its archive keeps: its name, contents and whether it is a folder.
    Times, owners and modes change with a fresh clone or another umask, and a new
    archive is a new version."""
    member.mtime = 0
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mode = 0o755 if member.isdir() else 0o644
    return member


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's members, read header by header and each checked before the
    next is read: regular files and folders only, inside the assets folder, within
    the limits. Nothing is unpacked before they all pass."""
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        _check_headers(member.name, member.pax_headers)
        name = PurePosixPath(member.name)
        if not (member.isreg() or member.isdir()):
            raise InvalidAssets(_not_plain(member.name, _kind_of_member(member)))
        if name.is_absolute():
            raise InvalidAssets(f"assets archive member {_shown(member.name)} is an absolute path")
        if ".." in name.parts:
            raise InvalidAssets(
                f"assets archive member {_shown(member.name)} climbs out of the assets "
                "folder with '..'"
            )
        members.append(member)
        total += member.size
        if len(members) > MAX_ASSETS_FILES:
            raise InvalidAssets(f"the assets archive holds more than {MAX_ASSETS_FILES} files")
        if total > MAX_ASSETS_BYTES:
            raise InvalidAssets(
                f"the assets unpack to more than {MAX_ASSETS_BYTES} bytes (256 MiB)"
            )
    _check_headers(None, tar.pax_headers)  # a global header after the last member
    return members


def _check_headers(name: str | None, pax: Mapping[str, str]) -> None:
    """A member's name and pax records (its own and the global ones), or the global
    records alone (`name` None): within bounds, and no sparse file."""
    if name is not None:
        if len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME:
            raise InvalidAssets(
                f"assets archive member {_shown(name)} has a name over {_MAX_NAME} bytes"
            )
        if "\0" in name:
            raise InvalidAssets(f"assets archive member {_shown(name)} has a NUL in its name")
    size = sum(len(key) + len(value) for key, value in pax.items())
    if len(pax) > _MAX_PAX_KEYS or size > _MAX_PAX_BYTES:
        raise InvalidAssets(
            f"the assets archive has pax records of {len(pax)} keys and {size} bytes"
            f"{'' if name is None else f' for member {_shown(name)}'} (at most "
            f"{_MAX_PAX_KEYS} keys and {_MAX_PAX_BYTES} bytes)"
        )
    if any(key.startswith("GNU.sparse.") for key in pax):
        raise InvalidAssets(
            f"assets archive member {_shown(name or '')} is a sparse file: an assets "
            "archive holds regular files and folders only"
        )


class _CheckedInfo(tarfile.TarInfo):
    """tarfile's header, refusing what would cost memory before it is read: tarfile
    reads an extension header's data whole, follows a chain of them recursively and
    keeps a global header's records for every later member, all before the member
    reaches `_checked_members`."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        _check_headers(None, archive.pax_headers)
        extension = self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        if extension and self.size > _MAX_PAX_BYTES:
            raise InvalidAssets(
                f"the assets archive has a pax header of {self.size} bytes "
                f"(at most {_MAX_PAX_BYTES})"
            )
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and (
            self.size > _MAX_NAME + 1  # and its NUL
        ):
            raise InvalidAssets(
                f"the assets archive has a long-name header of {self.size} bytes "
                f"(names are at most {_MAX_NAME} bytes)"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidAssets(
                f"assets archive member {_shown(self.name)} is a sparse file: an assets "
                "archive holds regular files and folders only"
            )
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]


def _shown(name: str) -> str:
    """`name` quoted for a message, its first `_SHOWN_NAME` characters."""
    if len(name) <= _SHOWN_NAME:
        return repr(name)
    return f"{name[:_SHOWN_NAME]!r}... ({len(name)} characters)"


def _member_of(exc: OSError, unpacked: Path) -> str:
    """The member an unpacking error is about, from its path below `unpacked`."""
    try:
        return str(Path(exc.filename).relative_to(unpacked))
    except (TypeError, ValueError):
        return "?"


def _not_plain(name: str, kind: str) -> str:
    return (
        f"assets archive member {_shown(name)} is a {kind}: an assets archive holds regular "
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

    def verify_end(self, end: int, last: str | None) -> None:
        """Check that from `end`, where tarfile stopped reading headers, the stream
        holds only the end marker and its padding (NUL bytes), to the gzip trailer,
        whose checksum gzip then checks: tarfile takes a header it cannot read
        after the first for the end of the archive, and ignores what follows the
        end marker; a damaged stored block is caught by the checksum alone."""
        self.seek(end)
        # 1 MiB reads: a bomb of zeros past the end marker inflates to the bound in
        # 0.9 s of CPU this way, 2.4 s in tarfile-sized reads of 64 KiB.
        while chunk := self._stream.read(1 << 20):
            self._within(self._stream.tell())
            if chunk.lstrip(b"\0"):
                after = "before its first member" if last is None else f"after {_shown(last)}"
                raise InvalidAssets(f"the assets archive is damaged {after}")

    def _within(self, position: int) -> None:
        if position > _MAX_INFLATED:
            raise InvalidAssets(f"the assets archive inflates to more than {_MAX_INFLATED} bytes")
