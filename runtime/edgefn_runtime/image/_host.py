"""The image capability as the guest sees it: `edgefn:http/image` in the linker.

Host functions find their request through the store's data (an `ImageContext`),
charge pixel work to the store's fuel, and keep the encoded result on the host
as the response body, so pixels never cross the component boundary.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _value
from wasmtime import component as wc

from edgefn.image import ImageInfo

from .._contract import CONTRACT_VERSION
from .._errors import FuelExhausted, MemoryLimitExceeded, SandboxError
from .._limits import Limits
from ._pipeline import Budget, ImageFailure, Rendered, probe, render

__all__ = ["IMAGE_IMPORT", "ImageContext", "add_image_capability"]

IMAGE_IMPORT = f"edgefn:http/image@{CONTRACT_VERSION}"
# Fuel charged per pixel decoded, produced or stamped: about the guest-Python
# cost of touching that many values, so pixel work cannot escape the budget.
FUEL_PER_PIXEL = 20
MAX_GUEST_BYTES = 64 * 1024


@dataclass
class ImageContext:
    """What the image capability needs from the request it serves.

    A store keeps one context for its life; `begin` readies it for each request.
    """

    assets: Path | None
    body: bytes = b""
    limits: Limits = field(default_factory=Limits)
    # The last image rendered, which a `response-body.rendered` head sends.
    rendered: bytes | None = None
    # A budget the image work broke; the sandbox raises it whatever the guest does.
    error: SandboxError | None = None
    pixels: int = 0

    def begin(self, body: bytes, limits: Limits) -> None:
        self.body, self.limits = body, limits
        self.rendered, self.error, self.pixels = None, None, 0


def add_image_capability(linker: wc.Linker) -> None:
    with linker.root() as root, root.add_instance(IMAGE_IMPORT) as instance:
        instance.add_func("probe", _probe)
        instance.add_func("render", _render)


def _context(store: wasmtime.StoreContext) -> ImageContext:
    # wasmtime-py's StoreContext has no data(); this is what Store.data() does.
    context = _value._unintern(ffi.wasmtime_context_get_data(store._context()))  # type: ignore[arg-type]
    assert isinstance(context, ImageContext)
    return context


def _source(context: ImageContext, source: Any) -> bytes:
    if source is None:
        return context.body
    if isinstance(source, str):
        if context.assets is None:
            raise ImageFailure("invalid_pipeline", "the function has no assets")
        path = (context.assets / source).resolve()
        if context.assets.resolve() not in path.parents or not path.is_file():
            raise ImageFailure("invalid_pipeline", f"no asset named {source!r}")
        return path.read_bytes()
    data = bytes(source)
    if len(data) > MAX_GUEST_BYTES:
        raise ImageFailure(
            "invalid_pipeline",
            "bytes sources are limited to 64 KiB; "
            "send large images as the request body or an asset",
        )
    return data


def _guarded(function: Callable[..., wc.Variant]) -> Callable[..., wc.Variant]:
    # An exception escaping a host function would trap the guest and resurface
    # through a process-wide slot in wasmtime-py; decoders of hostile input
    # raise all sorts, so every one becomes a failure the guest can handle.
    @functools.wraps(function)
    def guarded(*args: Any) -> wc.Variant:
        try:
            return function(*args)
        except ImageFailure as failure:
            return _failure(failure)
        except Exception as exc:
            return _failure(
                ImageFailure(
                    "invalid_image", f"the image cannot be processed: {type(exc).__name__}: {exc}"
                )
            )

    return guarded


@_guarded
def _probe(store: wasmtime.StoreContext, source: Any) -> wc.Variant:
    probed = probe(_source(_context(store), source))
    return wc.Variant("ok", _record(probed, exclude=()))


@_guarded
def _render(store: wasmtime.StoreContext, source: Any, pipeline: str) -> wc.Variant:
    context = _context(store)
    try:
        spec = json.loads(pipeline)
    except ValueError as exc:
        raise ImageFailure("invalid_pipeline", f"pipeline is not JSON: {exc}") from None
    budget = Budget(
        max_pixels=context.limits.max_image_pixels,
        max_decoded_bytes=context.limits.memory,
        max_output_bytes=context.limits.max_response,
        charge=lambda pixels: _charge(store, context, pixels),
    )
    try:
        rendered = render(_source(context, source), spec, context.assets, budget)
    except ImageFailure as failure:
        if failure.kind == "memory_limit":
            context.error = MemoryLimitExceeded(failure.message)
            _set_fuel(store, 0)  # stop the guest: the sandbox reports the breach
        raise
    context.rendered = rendered.data
    return wc.Variant("ok", _record(rendered, exclude=("data",), length=len(rendered.data)))


def _charge(store: wasmtime.StoreContext, context: ImageContext, pixels: int) -> None:
    context.pixels += pixels
    fuel = ctypes.c_uint64()
    error = ffi.wasmtime_context_get_fuel(store._context(), ctypes.byref(fuel))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    cost = pixels * FUEL_PER_PIXEL
    if cost > fuel.value:
        context.error = FuelExhausted(
            f"the function used all of its fuel ({context.limits.fuel:,} units) on image work"
        )
        _set_fuel(store, 0)
        raise ImageFailure("budget_exceeded", "the image work needs more fuel than is left")
    _set_fuel(store, fuel.value - cost)


def _set_fuel(store: wasmtime.StoreContext, fuel: int) -> None:
    error = ffi.wasmtime_context_set_fuel(store._context(), fuel)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def _failure(failure: ImageFailure) -> wc.Variant:
    record = wc.Record()
    record.__dict__.update(kind=failure.kind, message=failure.message)
    return wc.Variant("err", record)


def _record(value: ImageInfo | Rendered, exclude: tuple[str, ...], **extra: Any) -> wc.Record:
    record = wc.Record()
    fields = {k.replace("_", "-"): v for k, v in value.__dict__.items() if k not in exclude}
    record.__dict__.update(fields, **extra)
    return record
