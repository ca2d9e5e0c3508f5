"""The image capability as the guest sees it: `edgefn:http/image` in the linker.

Host functions find their request through the store's data (an `ImageContext`),
charge their work to the request's memory limit, fuel and deadline before doing
it (see `_budget.py`), and keep the encoded result on the host as the response
body, so pixels never cross the component boundary, and neither do the guest's
own image bytes: it writes them to its stdout, as it does a response body.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime import _value
from wasmtime import component as wc

from edgefn.image import MAX_SOURCE_BYTES, ImageInfo

from .._contract import CONTRACT_VERSION
from .._errors import FuelExhausted, MemoryLimitExceeded, SandboxError, Timeout
from .._limits import Limits
from ._budget import Budget, ImageFailure
from ._codecs import Rendered, probe
from ._pipeline import render

__all__ = ["IMAGE_IMPORT", "MAX_SOURCE_BYTES", "ImageContext", "add_image_capability"]

IMAGE_IMPORT = f"edgefn:http/image@{CONTRACT_VERSION}"


@dataclass
class ImageContext:
    """What the image capability needs from the request it serves.

    A store keeps one context for its life; `begin` readies it for each request.
    """

    assets: Path | None
    # Reads the next n bytes the guest wrote to its stdout (`bytes` sources).
    take_output: Callable[[int], bytes] | None = None
    body: bytes = b""
    limits: Limits = field(default_factory=Limits)
    deadline: float = 0.0  # on time.monotonic()'s clock
    # The last image rendered, which a `response-body.rendered` head sends.
    rendered: bytes | None = None
    # A budget the image work broke; the sandbox raises it whatever the guest does.
    error: SandboxError | None = None
    pixels: int = 0

    def begin(self, body: bytes, limits: Limits) -> None:
        self.body, self.limits = body, limits
        self.deadline = time.monotonic() + limits.timeout
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
    # `bytes(n)`: the guest just wrote n bytes to stdout. The length is checked
    # before a byte is read: a list<u8> would have been converted element by
    # element (1.4 us and ~40 bytes each) before any check could run.
    if not isinstance(source, int) or context.take_output is None:
        raise ImageFailure("invalid_pipeline", "unknown image source")
    if source > MAX_SOURCE_BYTES:
        raise ImageFailure(
            "invalid_pipeline",
            f"bytes sources are limited to 64 KiB, got {source:,} bytes; "
            "send large images as the request body or an asset",
        )
    return context.take_output(source)


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
    context = _context(store)
    with _charged(store, context) as budget:
        data = _source(context, source)
        # Hashing and parsing the header: about a nanosecond a byte, and a floor,
        # so that a guest probing in a loop pays fuel for the host's work.
        budget.reserve("probing the image", 0, 0, 0, len(data) + _PROBE_FUEL)
        probed = probe(data)
    return wc.Variant("ok", _record(probed, exclude=()))


_PROBE_FUEL = 100_000


@_guarded
def _render(store: wasmtime.StoreContext, source: Any, pipeline: str) -> wc.Variant:
    context = _context(store)
    try:
        spec = json.loads(pipeline)
    except ValueError as exc:
        raise ImageFailure("invalid_pipeline", f"pipeline is not JSON: {exc}") from None
    with _charged(store, context) as budget:
        rendered = render(_source(context, source), spec, context.assets, budget)
    context.rendered = rendered.data
    return wc.Variant("ok", _record(rendered, exclude=("data",), length=len(rendered.data)))


@contextlib.contextmanager
def _charged(store: wasmtime.StoreContext, context: ImageContext) -> Iterator[Budget]:
    """A budget drawing on the request's fuel, memory limit and deadline; a breach
    is recorded for the sandbox to raise, and the guest stopped."""
    budget = Budget(
        max_pixels=context.limits.max_image_pixels,
        max_memory=context.limits.memory,
        max_output_bytes=context.limits.max_response,
        deadline=context.deadline,
        spend=lambda fuel: _spend(store, fuel),
    )
    try:
        yield budget
    except ImageFailure as failure:
        breach = _BREACHES.get(failure.kind)
        if breach is not None:
            # The guest cannot catch this: out of fuel, it stops, and the sandbox
            # reports the budget the image work broke.
            context.error = breach(context.limits, failure.message)
            _set_fuel(store, 0)
        raise
    finally:
        context.pixels += budget.pixels


_BREACHES: dict[str, Callable[[Limits, str], SandboxError]] = {
    "memory_limit": lambda limits, message: MemoryLimitExceeded(
        f"image work needed more than the function's memory limit: {message}"
    ),
    "budget_exceeded": lambda limits, message: FuelExhausted(
        f"the function used all of its fuel ({limits.fuel:,} units) on image work"
    ),
    "timeout": lambda limits, message: Timeout(
        f"image work would run past the function's wall-clock timeout of "
        f"{limits.timeout:g} s: {message}"
    ),
}


def _spend(store: wasmtime.StoreContext, cost: int) -> None:
    fuel = ctypes.c_uint64()
    error = ffi.wasmtime_context_get_fuel(store._context(), ctypes.byref(fuel))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if cost > fuel.value:
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
