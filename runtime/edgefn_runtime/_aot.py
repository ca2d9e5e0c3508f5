"""Ahead-of-time compiled components, cached on disk.

Compiling an 18 MB componentize-py component with Cranelift takes seconds;
deserializing the compiled artifact takes milliseconds. Artifacts are keyed by
the component's sha256 and the engine's settings, so a different wasmtime
version or configuration never loads a stale one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import wasmtime
from wasmtime import component as wc

from ._errors import from_load_failure

__all__ = ["AotCache", "sha256_file"]

log = logging.getLogger("edgefn.runtime")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AotCache:
    """A directory of `<sha256>-<engine key>.cwasm` files."""

    def __init__(self, directory: Path, engine_key: str) -> None:
        self.directory = directory
        self.engine_key = engine_key
        self.hits = 0
        self.misses = 0

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}-{self.engine_key}.cwasm"

    def remove(self, sha256: str) -> None:
        """Forget the compiled artifact of a component no longer deployed."""
        self.path_for(sha256).unlink(missing_ok=True)

    def load(
        self,
        engine: wasmtime.Engine,
        wasm: Path,
        sha256: str | None = None,
        prepare: Callable[[bytes], bytes | None] | None = None,
    ) -> wc.Component:
        """The compiled component for `wasm`, compiling and caching it on a miss:
        what `prepare` makes of its bytes, or, if that is None or does not
        compile, the bytes as they are."""
        artifact = self.path_for(sha256 or sha256_file(wasm))
        if artifact.exists():
            try:
                component = wc.Component.deserialize_file(engine, str(artifact))
            except wasmtime.WasmtimeError:
                artifact.unlink(missing_ok=True)  # corrupt or incompatible: rebuild below
            else:
                self.hits += 1
                return component
        self.misses += 1
        data = wasm.read_bytes()
        prepared = prepare(data) if prepare is not None else None
        compiled = None
        if prepared is not None:
            try:
                compiled = wc.Component(engine, prepared)
            except wasmtime.WasmtimeError as exc:  # e.g. no handler to export: said below
                log.warning(
                    "%s does not compile as prepared, so it is compiled as it is: %s", wasm, exc
                )
        if compiled is None:
            try:
                compiled = wc.Component(engine, data)
            except wasmtime.WasmtimeError as exc:
                raise from_load_failure(
                    exc, f"{wasm} is not a valid WebAssembly component"
                ) from None
        self._store(artifact, compiled.serialize())
        return compiled

    def _store(self, artifact: Path, data: bytes | bytearray) -> None:
        # Written aside, then linked in place: concurrent loaders see a whole
        # artifact or none, and the first of several compiles (workers starting at
        # once, gateways sharing a --cache-dir) stays, so no process that mapped
        # it finds its file replaced underneath.
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, artifact)
        finally:
            Path(tmp).unlink(missing_ok=True)
