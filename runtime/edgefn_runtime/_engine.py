"""The process-wide wasmtime engine: configuration, epoch ticker, AOT cache."""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

import wasmtime
from wasmtime import component as wc

from ._aot import AotCache, sha256_file
from ._contract import check_component
from ._sandbox import Sandbox

__all__ = ["Engine", "default_cache_dir"]

# How often the ticker advances the epoch; timeouts are rounded up to this.
EPOCH_TICK_SECONDS = 0.01


def default_cache_dir() -> Path:
    """`$EDGEFN_CACHE_DIR`, else `~/.cache/edgefn`."""
    configured = os.environ.get("EDGEFN_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefn"


class Engine:
    """One wasmtime engine per process, configured for fuel and epoch deadlines.

    `load()` turns a component file into a `Sandbox`, compiling it ahead of
    time once and caching the result under `cache_dir/aot`.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.cranelift_opt_level = "speed"
        self._settings = "fuel,epoch,opt=speed"
        self.wasmtime = wasmtime.Engine(config)
        self.linker = wc.Linker(self.wasmtime)
        self.linker.add_wasip2()
        self.aot = AotCache((cache_dir or default_cache_dir()) / "aot", self._engine_key())
        self._ticker: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def _engine_key(self) -> str:
        identity = f"wasmtime={version('wasmtime')};{platform.machine()};{self._settings}"
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def load(
        self,
        wasm: Path | str,
        *,
        env: Mapping[str, str] | None = None,
        assets: Path | str | None = None,
    ) -> Sandbox:
        """A sandbox for the component at `wasm`.

        `env` is the only environment the guest sees; `assets`, if given, is
        mounted read-only at `/assets`. Raises `InvalidComponent` when the file
        is not a component implementing edgefn's handler world.
        """
        wasm = Path(wasm)
        sha256 = sha256_file(wasm)
        component = self.aot.load(self.wasmtime, wasm, sha256)
        check_component(self.wasmtime, component)
        if assets is not None and not Path(assets).is_dir():
            raise FileNotFoundError(f"assets directory {assets} does not exist")
        return Sandbox(self, component, sha256=sha256, env=dict(env or {}), assets=assets)

    def epoch_deadline(self, timeout: float) -> int:
        """Epoch ticks for `timeout` seconds, starting the ticker if needed."""
        self._start_ticker()
        return max(1, int(-(-timeout // EPOCH_TICK_SECONDS)))

    def _start_ticker(self) -> None:
        if self._ticker is not None:
            return
        with self._lock:
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="edgefn-epoch", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(EPOCH_TICK_SECONDS):
            self.wasmtime.increment_epoch()

    def close(self) -> None:
        """Stop the epoch ticker."""
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
