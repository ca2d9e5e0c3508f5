"""`Sandbox.invoke`: one request in a fresh, limited component instance."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import component as wc

from ._contract import HANDLER_EXPORT, request_head
from ._errors import (
    BodyTooLarge,
    GuestCrashed,
    ResponseTooLarge,
    SandboxError,
    from_guest_error,
    from_trap,
)
from ._limits import Limits
from ._messages import Outcome, Request, Response, Usage
from ._stdio import GuestOutput, set_stdin_bytes
from .image import ImageContext

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Sandbox"]

ASSETS_GUEST_PATH = "/assets"


class Sandbox:
    """A loaded function. Each `invoke` runs in a new store and instance.

    Nothing survives from one request to the next: globals, memory and files
    written by the guest are gone with the instance. Create with `Engine.load`.
    """

    def __init__(
        self,
        engine: Engine,
        component: wc.Component,
        *,
        sha256: str,
        env: dict[str, str],
        assets: Path | str | None,
    ) -> None:
        self.engine = engine
        self.component = component
        self.sha256 = sha256
        self.env = env
        self.assets = Path(assets) if assets is not None else None
        handler = component.get_export_index(HANDLER_EXPORT)
        handle = component.get_export_index("handle", handler)
        assert handle is not None, "check_component() vouched for this export"
        self._handle = handle

    def invoke(self, request: Request, limits: Limits | None = None) -> Outcome:
        """Run `request` through the function under `limits`.

        Raises a `SandboxError` subclass for every failure: the function's own
        exception (`GuestError`), a broken limit (`Timeout`, `FuelExhausted`,
        `MemoryLimitExceeded`, `BodyTooLarge`, `ResponseTooLarge`) or any other
        trap (`GuestCrashed`). The engine stays usable after each.
        """
        limits = limits or Limits()
        if len(request.body) > limits.max_body:
            raise BodyTooLarge(
                f"request body of {len(request.body)} bytes exceeds the limit of {limits.max_body}"
            )
        engine = self.engine
        context = ImageContext(request.body, self.assets, limits)
        store = wasmtime.Store(engine.wasmtime, data=context)
        store.set_limits(memory_size=limits.memory)
        store.set_fuel(limits.fuel)
        store.set_epoch_deadline(engine.epoch_deadline(limits.timeout))

        config = wasmtime.WasiConfig()
        config.env = list(self.env.items())
        if self.assets is not None:
            config.preopen_dir(str(self.assets), ASSETS_GUEST_PATH, fs_mutable=False)
        set_stdin_bytes(config, request.body)
        usage = Usage()
        with (
            GuestOutput(config, "stdout", limits.max_response) as body,
            GuestOutput(config, "stderr", limits.max_log) as log,
        ):
            store.set_wasi(config)
            context.output = body
            trap: wasmtime.WasmtimeError | None = None
            started = time.perf_counter()
            try:
                instance = engine.linker.instantiate(store, self.component)
                usage.instantiate_seconds = time.perf_counter() - started
                handle = instance.get_func(store, self._handle)
                assert handle is not None
                result = handle(store, request_head(request))
            except wasmtime.WasmtimeError as exc:
                trap = exc
            usage.execute_seconds = time.perf_counter() - started - usage.instantiate_seconds
            fuel_left = store.get_fuel()
            usage.fuel = limits.fuel - fuel_left
            logs = _log_lines(log)

            def fail(error: SandboxError) -> SandboxError:
                error.usage, error.logs = usage, logs
                return error

            usage.image_pixels = context.usage["pixels"]
            if context.error is not None:  # image work broke a budget; the guest can't hide it
                raise fail(context.error) from None
            if trap is not None:
                raise fail(from_trap(trap, limits, fuel_left=fuel_left, logs=logs)) from None
            if result.tag == "err":
                raise fail(from_guest_error(result.payload.kind, result.payload.message, limits))
            head = result.payload
            length = getattr(head, "body-length")
            if length > limits.max_response:
                raise fail(
                    ResponseTooLarge(
                        f"response body exceeds the limit of {limits.max_response} bytes "
                        f"(the function tried to send at least {length})"
                    )
                )
            if not 100 <= head.status <= 599:
                raise fail(GuestCrashed(f"the function answered with invalid status {head.status}"))
            return Outcome(Response(head.status, head.headers, body.read(length)), usage, logs)


def _log_lines(log: GuestOutput) -> list[str]:
    lines, truncated = log.read_text_lines()
    if truncated:
        lines.append(f"[edgefn] log limit of {log.limit} bytes reached; later output dropped")
    return lines
