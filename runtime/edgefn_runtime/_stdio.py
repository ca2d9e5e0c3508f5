"""The sandbox's stdio: request body in, response body and logs out.

Bodies never cross the boundary as `list<u8>` (wasmtime-py converts those one
element at a time, about 1.4 µs per byte). stdin is fed from bytes through the
C API; stdout and stderr are anonymous memory files the guest writes into
directly, with no Python callback per write.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os

import wasmtime
from wasmtime import _ffi as ffi

__all__ = ["GuestOutput", "set_stdin_bytes"]


def set_stdin_bytes(config: wasmtime.WasiConfig, data: bytes) -> None:
    """Make `data` the guest's stdin (wasmtime copies it into its own buffer)."""
    vec = ffi.wasm_byte_vec_t()
    # c_char_p points at the bytes object's own buffer: no copy on our side.
    buffer = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    ffi.wasi_config_set_stdin_bytes(config.ptr(), ctypes.byref(vec))


class GuestOutput:
    """A memfd behind the guest's stdout or stderr, sealed a little past `limit`.

    The file is sized and sealed against growing, so a guest that writes without
    end gets an I/O error instead of filling host memory; the unwritten rest
    reads as zeros. The kernel refuses a write page by page, so one page of
    slack past the limit guarantees that a guest which wrote more than `limit`
    bytes left more than `limit` bytes in the file, and we can tell.
    """

    def __init__(self, config: wasmtime.WasiConfig, stream: str, limit: int) -> None:
        self.limit = limit
        self._fd = os.memfd_create(f"edgefn-{stream}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            # wasmtime opens the path with O_TRUNC, so size and seal it afterwards.
            setattr(config, f"{stream}_file", f"/proc/self/fd/{self._fd}")
            os.ftruncate(self._fd, limit + mmap.PAGESIZE + 1)
            seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, seals)
        except BaseException:
            os.close(self._fd)
            raise

    def read(self, length: int) -> bytes:
        """The first `length` bytes (the SDK declares how many it wrote)."""
        return os.pread(self._fd, length, 0) if length else b""

    def write(self, data: bytes) -> None:
        """Put `data` at the start of the file, as if the guest had written it."""
        if len(data) > self.limit:
            raise ValueError(f"{len(data)} bytes exceed the limit of {self.limit}")
        os.pwrite(self._fd, data, 0)

    def read_text_lines(self) -> tuple[list[str], bool]:
        """Lines written so far, and whether the guest reached the limit."""
        # tmpfs reports unwritten pages as a hole: read only up to the first one.
        end = os.lseek(self._fd, 0, os.SEEK_HOLE)
        data = os.pread(self._fd, min(end, self.limit + 1), 0).rstrip(b"\0")
        truncated = len(data) > self.limit
        lines = data[: self.limit].decode("utf-8", "replace").splitlines()
        return lines, truncated

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> GuestOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
