"""Hostile assets archives, uploaded to the admin API as raw multipart requests (the
CLI would refuse to pack most of them): each is refused with 400 `invalid_assets`
and a message naming what is wrong, nothing is unpacked anywhere, and a gzip bomb
costs the worker neither its memory nor seconds of CPU."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

import attacks
from edgefn_platform import build
from edgefn_platform.gateway import InvalidAssets, pack_assets
from edgefn_platform.gateway._assets import MAX_ASSETS_BYTES, MAX_ASSETS_FILES
from edgefn_platform.gateway._deploy import Deployer
from edgefn_platform.registry import Registry
from edgefn_runtime import Engine
from gateway_process import ROOT, GatewayProcess, cpu_seconds, reset_peak_rss, rss

AREA = "Hostile assets archives (tests/test_hostile_assets.py)"
MANIFEST = 'name = "assets-probe"\nassets = "static"\n'
MiB = 1 << 20


@pytest.fixture(scope="module")
def hello_wasm() -> bytes:
    return build(ROOT / "functions" / "hello").path.read_bytes()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # One worker, in the gateway's own process: its memory and CPU time are the
    # gateway process's.
    process = GatewayProcess(tmp_path_factory.mktemp("assets") / "data").start()
    try:
        yield process
    finally:
        process.stop()


def deploy(gateway: GatewayProcess, component: bytes, archive: bytes) -> tuple[int, dict[str, str]]:
    response = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": MANIFEST},
        files={"component": ("c.wasm", component), "assets": ("a.tar.gz", archive)},
    )
    return response.status_code, response.json().get("error", {})


def deploy_measuring_memory(
    gateway: GatewayProcess, component: bytes, archive: bytes
) -> tuple[int, dict[str, str], int]:
    """`deploy`, and how much the worker's peak memory (VmHWM) grew meanwhile."""
    assert gateway.process is not None
    pid = gateway.process.pid
    before = reset_peak_rss(pid)
    status, error = deploy(gateway, component, archive)
    return status, error, rss(pid, "VmHWM") - before


def tar_gz(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's
    return info, None


def zeros_gz(*segments: tuple[bytes, int], crc: bool = True) -> bytes:
    """A gzip stream of each segment's bytes followed by that many MiB of zeros, made
    in milliseconds whatever its size: after a full flush the compressor starts
    afresh, so every 1 MiB of zeros deflates to the same bytes, repeated. Without
    `crc` the trailer's checksum is left 0 (computing it for gigabytes takes
    seconds): the gateway must refuse such an archive long before it gets there."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip frame is ours
    zeros = bytes(MiB)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    body, checksum, size = [], 0, 0
    for data, mebibytes in segments:
        body += [deflate.compress(data) + deflate.flush(zlib.Z_FULL_FLUSH), block * mebibytes]
        size += len(data) + mebibytes * MiB
        if crc:
            checksum = zlib.crc32(data, checksum)
            for _ in range(mebibytes):
                checksum = zlib.crc32(zeros, checksum)
    trailer = struct.pack("<II", checksum, size & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"".join(body) + deflate.flush() + trailer


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)


def unpacked_anywhere(gateway: GatewayProcess) -> list[Path]:
    """What the refused deploys left in the data directory's assets and scratch folders."""
    data = gateway.data_dir
    return [*(data / "assets").glob("*"), *(data / "tmp").glob("*")]


LINKS_AND_SPECIALS = [
    ("a symlink to /etc/passwd", special("passwd", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
    ("a symlink climbing out with ..", special("up", tarfile.SYMTYPE, "../../.."), "symlink"),
    ("a symlink to a file beside it", special("alias", tarfile.SYMTYPE, "logo.txt"), "symlink"),
    ("a hard link to /etc/passwd", special("passwd", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    ("a hard link to a file beside it", special("alias", tarfile.LNKTYPE, "logo.txt"), "hard link"),
    ("a character device (/dev/null's numbers)", special("null", tarfile.CHRTYPE), "device"),
    ("a block device", special("disk", tarfile.BLKTYPE), "device"),
    ("a FIFO", special("pipe", tarfile.FIFOTYPE), "FIFO"),
]


@pytest.mark.parametrize(
    ("attack", "member", "named"), LINKS_AND_SPECIALS, ids=[c[0] for c in LINKS_AND_SPECIALS]
)
def test_links_and_special_files_are_refused(
    gateway: GatewayProcess,
    hello_wasm: bytes,
    attack: str,
    member: tuple[tarfile.TarInfo, None],
    named: str,
) -> None:
    archive = tar_gz(regular("logo.txt"), member)
    status, error = deploy(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert f"{member[0].name!r} is a {named}" in error["message"]
    assert "regular files and folders only" in error["message"]
    assert unpacked_anywhere(gateway) == []
    assert gateway.admin("GET", "/v1/functions/assets-probe").status_code == 404
    attacks.record(
        AREA,
        f"an archive holding {attack}",
        f"400 `invalid_assets` naming it as a {named}; nothing unpacked",
    )


def test_paths_out_of_the_assets_folder_are_refused(
    gateway: GatewayProcess, hello_wasm: bytes
) -> None:
    outside = gateway.data_dir.parent
    # The archive unpacks in data/tmp/<scratch>/assets: four levels below `outside`.
    cases = [
        ("a member named ../../../../escaped.txt", "../../../../escaped.txt", "climbs out"),
        ("a member named a/../../x", "a/../../x", "climbs out"),
        ("a member with an absolute path", f"{outside}/absolute.txt", "absolute"),
    ]
    for attack, name, reason in cases:
        status, error = deploy(gateway, hello_wasm, tar_gz(regular("logo.txt"), regular(name)))
        assert (status, error.get("code")) == (400, "invalid_assets"), (attack, error)
        assert repr(name) in error["message"] and reason in error["message"], error
        # The server's own folders are not in the message.
        assert str(gateway.data_dir) not in error["message"].replace(name, "")
        attacks.record(AREA, attack, f"400 `invalid_assets`: the member {reason}; nothing written")
    assert not (outside / "escaped.txt").exists()
    assert not (outside / "absolute.txt").exists()
    assert not (outside / "x").exists()
    assert unpacked_anywhere(gateway) == []


def test_more_than_the_file_limit_is_refused(gateway: GatewayProcess, hello_wasm: bytes) -> None:
    archive = tar_gz(*(regular(f"f{i}", b"") for i in range(MAX_ASSETS_FILES + 1)))
    status, error = deploy(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert f"more than {MAX_ASSETS_FILES} files" in error["message"]
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"{MAX_ASSETS_FILES + 1} empty files",
        f"400 `invalid_assets` (at most {MAX_ASSETS_FILES} files), refused from the headers",
    )


def test_more_than_the_size_limit_is_refused(gateway: GatewayProcess, hello_wasm: bytes) -> None:
    # Three honest members of 100 MiB, 300 MiB in all (its checksum right too).
    archive = zeros_gz(*((header(name, 100 * MiB), 100) for name in "abc"), (bytes(1024), 0))
    status, error = deploy(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert f"more than {MAX_ASSETS_BYTES} bytes" in error["message"]
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        "three files of 100 MiB (300 MiB unpacked)",
        "400 `invalid_assets` (at most 256 MiB), refused from the headers before any is written",
    )


def test_a_gzip_bomb_costs_no_cpu_to_speak_of(gateway: GatewayProcess, hello_wasm: bytes) -> None:
    # 32 GiB of zeros in one member, in a 33 MB upload.
    gigabytes = 32
    archive = zeros_gz((header("bomb", gigabytes << 30), gigabytes << 10), crc=False)
    assert gateway.process is not None
    pid = gateway.process.pid
    cpu, started = cpu_seconds(pid), time.monotonic()
    status, error = deploy(gateway, hello_wasm, archive)
    spent, took = cpu_seconds(pid) - cpu, time.monotonic() - started
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert f"more than {MAX_ASSETS_BYTES} bytes" in error["message"]
    # Inflating 32 GiB takes tens of seconds; the headers alone, next to nothing
    # (the upload itself is hashed and written: about 0.1 s).
    # (Bounds loose enough for a loaded 2-core machine under coverage.)
    assert spent < 10 and took < 30, f"{spent:.1f} s of CPU, {took:.1f} s in all"
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"a gzip bomb: {len(archive) // MiB} MiB inflating to {gigabytes} GiB of zeros",
        f"400 `invalid_assets` from its first header; {spent:.1f} s of the worker's CPU",
    )


def test_a_header_claiming_a_huge_name_is_not_read_into_memory(
    gateway: GatewayProcess, hello_wasm: bytes
) -> None:
    # A GNU long-name header whose "name" is 512 MiB of zeros: tarfile reads a
    # header's data whole into memory.
    size = 512 * MiB
    archive = zeros_gz((header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME), size // MiB))
    status, error, grew = deploy_measuring_memory(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "header" in error["message"], error
    assert grew < 100 * MiB, f"the worker's peak memory grew by {grew // MiB} MiB"
    attacks.record(
        AREA,
        f"a gzip'd {size // MiB} MiB long-name header ({len(archive) // 1024} KiB uploaded)",
        f"400 `invalid_assets` naming the header; the worker's peak memory grew {grew // MiB} MiB",
    )


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_a_damaged_archive_is_400_not_500(
    gateway: GatewayProcess, hello_wasm: bytes, damage: str
) -> None:
    archive = tar_gz(regular("logo.txt", os.urandom(200_000)))
    middle = len(archive) // 2
    if damage == "truncated":
        archive = archive[:middle]
    else:
        flipped = bytes(b ^ 0xFF for b in archive[middle : middle + 64])
        archive = archive[:middle] + flipped + archive[middle + 64 :]
    status, error = deploy(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "cannot be unpacked" in error["message"]
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA, f"a {damage} gzip stream", "400 `invalid_assets` (not 500); nothing unpacked"
    )


def test_honest_archives_still_deploy(tmp_path: Path, hello_wasm: bytes) -> None:
    # A gateway of its own: what it unpacks stays in its data directory (a delete
    # keeps unpacked assets until the next start), not in the one the refusals check.
    with GatewayProcess(tmp_path / "data") as gateway:
        for members in (
            [regular("static/logo.txt", b"hello"), regular("top.txt")],
            [],  # an empty assets folder
        ):
            archive = tar_gz(*members)
            status, error = deploy(gateway, hello_wasm, archive)
            assert status == 201, error
            unpacked = gateway.data_dir / "assets" / hashlib.sha256(archive).hexdigest()
            found = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*")}
            names = {m.name for m, _ in members}
            assert found == names | {str(Path(n).parent) for n in names} - {"."}


@pytest.mark.parametrize("kind", ["symlink", "FIFO"])
def test_the_cli_refuses_to_pack_what_the_gateway_would_refuse(tmp_path: Path, kind: str) -> None:
    assets = tmp_path / "static"
    assets.mkdir()
    (assets / "logo.txt").write_text("x")
    if kind == "symlink":
        (assets / "secret").symlink_to("/etc/passwd")
    else:
        os.mkfifo(assets / "secret")
    with pytest.raises(InvalidAssets, match=f"'secret' is a {kind}"):
        pack_assets(assets, tmp_path / "a.tar.gz")


def pax(name: str, records: dict[str, str], data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info, data = regular(name, data)
    info.pax_headers = records
    return info, data


def pax_tar_gz(*members: tuple[tarfile.TarInfo, bytes], globals_: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers=globals_
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


CRAFTED_PAX = [
    # tarfile's own parsing of these raised ValueError: a 500 and a traceback.
    (
        "GNU sparse 0.1 records with a junk map",
        pax("a", {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.map": "x,y"}),
        "cannot be unpacked",
    ),
    (
        "GNU sparse 1.0 records over junk data",
        pax("a", {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}, b"junk" * 300),
        "cannot be unpacked",
    ),
    ("a pax path with a NUL in it", pax("a", {"path": "a\x00b"}), "has a NUL in its name"),
    # Parsed fine, but a sparse member is no regular file.
    (
        "GNU sparse 0.0 records",
        pax("a", {"GNU.sparse.size": "1", "GNU.sparse.numblocks": "0"}),
        "is a sparse file",
    ),
]


@pytest.mark.parametrize(
    ("attack", "member", "reason"), CRAFTED_PAX, ids=[c[0] for c in CRAFTED_PAX]
)
def test_crafted_pax_records_are_400_not_500(
    gateway: GatewayProcess,
    hello_wasm: bytes,
    attack: str,
    member: tuple[tarfile.TarInfo, bytes],
    reason: str,
) -> None:
    status, error = deploy(gateway, hello_wasm, pax_tar_gz(member, globals_={}))
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert reason in error["message"], error
    assert unpacked_anywhere(gateway) == []
    attacks.record(AREA, f"a member with {attack}", f"400 `invalid_assets` ({reason}), not 500")


@pytest.mark.parametrize("size", ["large", "many keys"])
def test_a_global_pax_header_costs_no_memory_per_member(
    gateway: GatewayProcess, hello_wasm: bytes, size: str
) -> None:
    # tarfile copies a global header's records into every later member: 2.1 MiB a
    # member for these 80,000 keys (0.9 MiB), 21 GiB for 10,000 members. 200 are
    # enough to show it (420 MiB) without taking the machine down if it regresses.
    keys = 80_000 if size == "large" else 40
    records = {f"k{i:05}": "" for i in range(keys)}
    archive = pax_tar_gz(*(regular(f"f{i}", b"") for i in range(200)), globals_=records)
    status, error, grew = deploy_measuring_memory(gateway, hello_wasm, archive)
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "pax" in error["message"], error
    assert grew < 100 * MiB, f"the worker's peak memory grew by {grew // MiB} MiB"
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"a global pax header of {keys} keys ({len(archive) // 1024} KiB uploaded), "
        "then 200 members",
        f"400 `invalid_assets` (at most 32 keys and 8 KiB of pax records); the worker's "
        f"peak memory grew {grew // MiB} MiB",
    )


@pytest.mark.parametrize("kind", ["GNU long-name", "pax path"])
def test_a_name_over_4096_bytes_is_refused(
    gateway: GatewayProcess, hello_wasm: bytes, kind: str
) -> None:
    # 10,000 members of 60 KiB names would keep 600 MiB of names in memory.
    info, data = regular("n" * 5000)
    buffer = io.BytesIO()
    layout = tarfile.GNU_FORMAT if kind == "GNU long-name" else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=buffer, mode="w:gz", format=layout) as tar:
        tar.addfile(info, io.BytesIO(data))
    status, error = deploy(gateway, hello_wasm, buffer.getvalue())
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "4096 bytes" in error["message"], error
    assert len(error["message"]) < 400, error
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"a member name of 5000 bytes in a {kind} header",
        "400 `invalid_assets` (at most 4096)",
    )


def plain_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("damage", ["a corrupted second header", "garbage after the end"])
def test_a_damaged_tar_in_a_sound_gzip_is_refused(
    gateway: GatewayProcess, hello_wasm: bytes, damage: str
) -> None:
    tar = bytearray(plain_tar(regular("a"), regular("b"), regular("c")))
    if damage == "a corrupted second header":
        tar[1024] ^= 0xFF  # b's name: its checksum no longer matches
        after = "'a'"
    else:
        tar += b"\x01" * 512
        after = "'c'"
    status, error = deploy(gateway, hello_wasm, gz(bytes(tar)))
    # tarfile took the damage for the end of the archive: only a (or all) deployed.
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert error["message"] == f"the assets archive is damaged after {after}", error
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"a tar with {damage}, in a sound gzip stream",
        "400 `invalid_assets` (damaged after the last member read); nothing unpacked",
    )


def test_a_bomb_after_the_end_marker_is_refused(gateway: GatewayProcess, hello_wasm: bytes) -> None:
    # Honest members, then 4 GiB of zeros: NUL bytes after the end marker are
    # padding, so only the bound on inflating stops it.
    gigabytes = 4
    honest = plain_tar(regular("logo.txt", b"hello"), regular("top.txt"))
    archive = zeros_gz((honest, gigabytes << 10), crc=False)
    assert gateway.process is not None
    pid = gateway.process.pid
    cpu, started = cpu_seconds(pid), time.monotonic()
    status, error = deploy(gateway, hello_wasm, archive)
    spent, took = cpu_seconds(pid) - cpu, time.monotonic() - started
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "inflates to more than" in error["message"], error
    # Inflating 4 GiB takes seconds; the bound stops it at about 295 MiB.
    assert spent < 10 and took < 30, f"{spent:.1f} s of CPU, {took:.1f} s in all"
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA,
        f"two honest files, then {gigabytes} GiB of zeros after the end marker "
        f"({len(archive) // MiB} MiB uploaded)",
        f"400 `invalid_assets` once it inflates past ~295 MiB; {spent:.1f} s of the worker's CPU",
    )


LAYOUTS = [
    ("a file named '.'", [regular(".")], "Is a directory at member '.'"),
    ("a file below a file", [regular("a"), regular("a/b")], "Not a directory at member 'a/b'"),
    ("a name component of 300 bytes", [regular("x" * 300)], "File name too long at member"),
]


@pytest.mark.parametrize(("attack", "members", "reason"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_an_archive_that_cannot_be_laid_out_is_400_without_server_paths(
    gateway: GatewayProcess,
    hello_wasm: bytes,
    attack: str,
    members: list[tuple[tarfile.TarInfo, bytes]],
    reason: str,
) -> None:
    status, error = deploy(gateway, hello_wasm, tar_gz(*members))
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert reason in error["message"], error
    assert "/tmp" not in error["message"] and str(gateway.data_dir) not in error["message"]
    assert unpacked_anywhere(gateway) == []
    attacks.record(
        AREA, f"an archive with {attack}", "400 `invalid_assets` naming the member, no server path"
    )


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.ENOSPC, errno.EDQUOT])
def test_a_server_side_error_while_unpacking_is_not_blamed_on_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "x"))

    monkeypatch.setattr(tarfile.TarFile, "makefile", failing)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz(regular("logo.txt")))
    (tmp_path / "scratch").mkdir()
    deployer = Deployer(cast(Registry, None), cast(Engine, None), tmp_path / "data")
    # Re-raised as it is: a 500 the gateway logs, or (ENOSPC, EDQUOT) 507 storage full.
    with pytest.raises(OSError) as raised:
        deployer._unpack(archive, tmp_path / "scratch", "sha")
    assert raised.value.errno == code


def test_long_member_names_are_cut_short_in_messages(
    gateway: GatewayProcess, hello_wasm: bytes
) -> None:
    name = "s" * 4000
    status, error = deploy(gateway, hello_wasm, tar_gz(special(name, tarfile.SYMTYPE, "x")))
    assert (status, error.get("code")) == (400, "invalid_assets"), error
    assert "is a symlink" in error["message"] and "(4000 characters)" in error["message"]
    assert len(error["message"]) < 400, len(error["message"])


def test_the_same_folder_packs_to_the_same_bytes(tmp_path: Path) -> None:
    # As after a fresh clone: other times, another umask.
    assets = tmp_path / "static"
    (assets / "css").mkdir(parents=True)
    (assets / "css" / "site.css").write_text("body {}")
    (assets / "logo.txt").write_text("x")
    pack_assets(assets, tmp_path / "first.tar.gz")
    for path in [assets, *assets.rglob("*")]:
        os.utime(path, (1_000_000, 1_000_000))
    (assets / "logo.txt").chmod(0o664)
    (assets / "css").chmod(0o775)
    pack_assets(assets, tmp_path / "second.tar.gz")
    first, second = ((tmp_path / f"{n}.tar.gz").read_bytes() for n in ("first", "second"))
    assert first == second
