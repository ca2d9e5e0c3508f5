"""The sandbox's stdio: request bodies in, response bodies and logs out.

Bodies never cross the boundary as `list<u8>` (wasmtime-py converts those one
element at a time, about 1.4 µs per byte). The guest reads and writes them
itself, through WASI, in memory the host reads and writes directly.

An instance that serves several requests keeps its stdout and stderr for its
life: each request takes the next stretch of them. The host knows where each
stretch starts because the guest declares how many bytes it wrote, and punches
used stretches out of the memory files, so a long-lived instance holds no more
host memory than a fresh one. Its request bodies come in a read-only file
instead of stdin, because wasmtime reads a stdin file ahead to its end once
and then closes the stream for good; outbound response bodies come the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import mmap
import os
import shutil
import tempfile

import wasmtime

__all__ = ["GuestFiles", "GuestOutput"]

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_RELEASE_CHUNK = 1 << 20


class GuestFiles:
    """Files the host writes for the guest to read, in a read-only `/.edgefn`.

    `body`: the request body of an instance serving several requests;
    `fetch`: the body of the last outbound response (`edgefn_contract.outbound`).
    """

    GUEST_DIR = "/.edgefn"

    def __init__(self, config: wasmtime.WasiConfig) -> None:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._dir = tempfile.mkdtemp(prefix="edgefn-files-", dir=shm)
        self._files: dict[str, tuple[int, int]] = {}  # name -> (fd, size)
        config.preopen_dir(self._dir, self.GUEST_DIR, fs_mutable=False)

    def put(self, name: str, data: bytes) -> None:
        """Make `data` the content of `/.edgefn/<name>`, for the guest to open."""
        fd, size = self._files.get(name, (-1, 0))
        if fd < 0:
            fd = os.open(os.path.join(self._dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        if data or size:
            os.ftruncate(fd, len(data))
            os.pwrite(fd, data, 0)
        self._files[name] = (fd, len(data))

    def close(self) -> None:
        files, self._files = self._files, {}
        for fd, _ in files.values():
            os.close(fd)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


class GuestOutput:
    """A memfd behind the guest's stdout or stderr, sealed at `capacity` bytes.

    The file is sized and sealed against growing, so a guest that writes without
    end gets an I/O error instead of filling host memory; the unwritten rest
    reads as zeros. The kernel refuses a write page by page, so a stretch is
    only handed out while `limit` plus one page fits (`fits`): a guest that
    wrote more than `limit` bytes then left more than `limit` bytes in the
    file, and we can tell.
    """

    def __init__(self, config: wasmtime.WasiConfig, stream: str, capacity: int) -> None:
        self._fd = os.memfd_create(f"edgefn-{stream}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.capacity = capacity
        self.cursor = 0  # where the current request's stretch starts
        self._released = 0  # bytes before this were punched out
        try:
            # wasmtime opens the path with O_TRUNC, so size and seal it afterwards.
            setattr(config, f"{stream}_file", f"/proc/self/fd/{self._fd}")
            os.ftruncate(self._fd, capacity)
            seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def stretch(limit: int) -> int:
        """Room one request needs to show that it went over `limit`."""
        return limit + mmap.PAGESIZE + 1

    def fits(self, limit: int) -> bool:
        """Whether the rest of the file can hold one more request under `limit`."""
        return self.capacity - self.cursor >= self.stretch(limit)

    def take(self, length: int) -> bytes:
        """The next `length` bytes the guest wrote (it declares how many)."""
        data = os.pread(self._fd, length, self.cursor) if length else b""
        self._advance(self.cursor + len(data))
        return data

    def take_text_lines(self, limit: int) -> tuple[list[str], bool]:
        """Lines written since the last call, and whether they went over `limit`."""
        # tmpfs reports unwritten pages as a hole; the zeros that end the last
        # written page are not the guest's.
        end = os.lseek(self._fd, self.cursor, os.SEEK_HOLE)
        if end == self.cursor:
            return [], False
        tail_start = max(self.cursor, end - mmap.PAGESIZE)
        end = tail_start + len(os.pread(self._fd, end - tail_start, tail_start).rstrip(b"\0"))
        data = os.pread(self._fd, min(end - self.cursor, limit + 1), self.cursor)
        self._advance(end)
        lines = data[:limit].decode("utf-8", "replace").splitlines()
        return lines, len(data) > limit

    def _advance(self, cursor: int) -> None:
        self.cursor = cursor
        # Give read stretches' memory back in chunks, not a system call per request.
        if cursor - self._released >= _RELEASE_CHUNK:
            if _libc.fallocate(self._fd, _PUNCH_HOLE, 0, cursor) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, os.strerror(errno))
            self._released = cursor

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
