"""Per-request resource limits."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_RESPONSE_HEADER_BYTES", "MAX_RESPONSE_HEADERS", "Limits", "MIN_MEMORY"]

MiB = 1024 * 1024

# componentize-py's CPython starts with about 12.3 MB of linear memory; a hello
# function does not run under less than this.
MIN_MEMORY = 16 * MiB

# What a response's headers may add up to (as nginx's and Cloudflare's proxies
# bound them): past this, clients and proxies in front would refuse it anyway.
MAX_RESPONSE_HEADERS = 100
MAX_RESPONSE_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may use. Each breach raises its own `SandboxError`.

    memory: bytes of linear memory; fuel: wasmtime fuel units (roughly one per
    wasm instruction); timeout: wall-clock seconds; max_body / max_response:
    request and response body bytes; max_log: log bytes kept per request;
    max_image_pixels: largest image (width x height) the image service decodes;
    max_kv_value: bytes of one key-value store value; max_kv_store: bytes one
    store holds (keys and values); max_kv_keys: keys one store holds;
    max_kv_ops: key-value operations one request may make.
    """

    memory: int = 64 * MiB
    fuel: int = 2_000_000_000
    timeout: float = 2.0
    max_body: int = 10 * MiB
    max_response: int = 10 * MiB
    max_log: int = 64 * 1024
    max_image_pixels: int = 40_000_000
    max_kv_value: int = 1 * MiB
    max_kv_store: int = 100 * MiB
    max_kv_keys: int = 100_000
    max_kv_ops: int = 1000

    def __post_init__(self) -> None:
        if self.memory < MIN_MEMORY:
            raise ValueError(f"memory limit {self.memory} B is below the minimum of 16 MiB")
        for name in (
            "fuel",
            "max_body",
            "max_response",
            "max_log",
            "max_image_pixels",
            "max_kv_value",
            "max_kv_store",
            "max_kv_keys",
            "max_kv_ops",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} limit must be a non-negative int, got {value!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
