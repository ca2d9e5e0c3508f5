"""The image capability: `edgefn:http/image` for guests, and the same host code natively.

Host functions find their request through the shared `RequestContext`, charge
their work to the request's memory limit, fuel and deadline before doing it
(see `_budget.py`), and keep the encoded result on the host as the response
body, so pixels never cross the component boundary, and neither do the guest's
own image bytes: it writes them to its stdout, as it does a response body.

`probe_source` and `render_source` take no store: the sandbox's linker
binding and `native_backend` (what `edgefn.testing` runs) call the same code,
with the same checks and budgets.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wasmtime
from wasmtime import component as wc

from edgefn_contract.image import MAX_SOURCE_BYTES, ImageInfo
from edgefn_contract.outbound import IMAGE_FAILURE_PREFIX

from ..._contract import CONTRACT_VERSION
from ..._errors import FuelExhausted, MemoryLimitExceeded, SandboxError, Timeout
from ..._limits import Limits
from ..._messages import Request, Usage
from .._base import Capability, CountedFuel, Fuel, RequestContext, host_call
from ..outbound import OutboundFailure, fetch_for
from ._budget import Budget, ImageFailure
from ._codecs import Rendered, probe, read_asset
from ._pipeline import render

__all__ = [
    "IMAGE_IMPORT",
    "MAX_SOURCE_BYTES",
    "ImageCapability",
    "NativeImages",
    "native_backend",
    "probe_source",
    "render_source",
]

IMAGE_IMPORT = f"edgefn:http/image@{CONTRACT_VERSION}"
_T = TypeVar("_T")

# A source as the WIT `source` variant carries it, (case, payload): ("body",
# None), ("asset", name), ("bytes", how many bytes the guest just wrote to its
# stdout) or ("url", an absolute URL the host fetches).
Source = tuple[str, Any]


@dataclass
class ImageState:
    """One request's image work so far."""

    pixels: int = 0
    # Originals fetched for `url` sources, by URL: a function that probes an
    # image (for an ETag) and then renders it fetches it once.
    fetched: dict[str, bytes] = field(default_factory=dict)


class ImageCapability(Capability):
    name = "image"
    imports = frozenset({IMAGE_IMPORT})
    # Room in stdout for one `bytes` source besides the response body.
    stdout_reserve = MAX_SOURCE_BYTES

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(IMAGE_IMPORT) as instance:
            instance.add_func("probe", _probe)
            instance.add_func("render", _render)

    def begin(self, context: RequestContext) -> ImageState:
        return ImageState()

    def finish(self, state: ImageState, usage: Usage) -> None:
        usage.image_pixels = state.pixels


# The host code, with no store ------------------------------------------------


def probe_source(context: RequestContext, fuel: Fuel, source: Source) -> ImageInfo:
    """Probe `source` for the request `context`; raises `ImageFailure`."""
    with _charged(context, fuel) as budget:
        data = _source(context, fuel, source)
        # Hashing and parsing the header: about a nanosecond a byte, and a floor,
        # so that a guest probing in a loop pays fuel for the host's work.
        budget.reserve("probing the image", 0, 0, 0, len(data) + _PROBE_FUEL)
        return probe(data)


_PROBE_FUEL = 100_000


def render_source(context: RequestContext, fuel: Fuel, source: Source, pipeline: str) -> Rendered:
    """Run the JSON `pipeline` on `source`; the result becomes the request's
    host-rendered response body. Raises `ImageFailure`."""
    try:
        spec = json.loads(pipeline)
    except ValueError as exc:
        raise ImageFailure("invalid_pipeline", f"pipeline is not JSON: {exc}") from None
    with _charged(context, fuel) as budget:
        rendered = render(_source(context, fuel, source), spec, context.assets, budget)
    context.response_body = rendered.data
    return rendered


def _source(context: RequestContext, fuel: Fuel, source: Source) -> bytes:
    kind, value = source
    if kind == "body":
        return context.body
    if kind == "asset" and isinstance(value, str):
        return read_asset(context.assets, value, "the function has no assets")
    if kind == "url" and isinstance(value, str):
        # Fetched by the host under the function's grant and the operator's
        # policy, its bytes counted with the request's other fetches.
        fetched: dict[str, bytes] = context.states[ImageCapability.name].fetched
        if value not in fetched:
            try:
                fetched[value] = fetch_for(context, fuel, value)
            except OutboundFailure as failure:
                raise ImageFailure(IMAGE_FAILURE_PREFIX + failure.kind, failure.message) from None
        return fetched[value]
    # `bytes(n)`: the guest just wrote n bytes to stdout. The length is checked
    # before a byte is read: a list<u8> would have been converted element by
    # element (1.4 us and ~40 bytes each) before any check could run.
    if kind != "bytes" or not isinstance(value, int) or context.take_output is None:
        raise ImageFailure("invalid_pipeline", "unknown image source")
    if value > MAX_SOURCE_BYTES:
        raise ImageFailure(
            "invalid_pipeline",
            f"bytes sources are limited to 64 KiB, got {value:,} bytes; "
            "send large images as the request body or an asset",
        )
    return context.take_output(value)


@contextlib.contextmanager
def _charged(context: RequestContext, fuel: Fuel) -> Iterator[Budget]:
    """A budget drawing on the request's fuel, memory limit and deadline; a breach
    is recorded for the sandbox to raise, and the guest stopped."""
    limits = context.limits

    def spend(cost: int) -> None:
        if not fuel.spend(cost):
            raise ImageFailure("budget_exceeded", "the image work needs more fuel than is left")

    budget = Budget(
        max_pixels=limits.max_image_pixels,
        max_memory=limits.memory,
        max_output_bytes=limits.max_response,
        deadline=context.deadline,
        spend=spend,
    )
    try:
        yield budget
    except ImageFailure as failure:
        breach = _BREACHES.get(failure.kind)
        if breach is not None:
            context.stop(fuel, breach(limits, failure.message))
        raise
    finally:
        state = context.states[ImageCapability.name]
        state.pixels += budget.pixels


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


def _as_failure(exc: Exception) -> ImageFailure:
    # Decoders of hostile input raise all sorts: each becomes a failure the guest
    # can handle, the same in the sandbox and natively.
    if isinstance(exc, ImageFailure):
        return exc
    return ImageFailure(
        "invalid_image", f"the image cannot be processed: {type(exc).__name__}: {exc}"
    )


# The sandbox's linker binding ------------------------------------------------


def _guarded(
    function: Callable[..., wc.Variant],
) -> Callable[..., wc.Variant]:
    # An exception escaping a host function would trap the guest and resurface
    # through a process-wide slot in wasmtime-py: every one becomes an `err`
    # (but `host_call`'s, which traps on purpose).
    @functools.wraps(function)
    def guarded(store: wasmtime.StoreContext, *args: Any) -> wc.Variant:
        context, fuel = host_call(store)  # outside the `try`: see there
        try:
            return function(context, fuel, *args)
        except Exception as exc:
            failure = _as_failure(exc)
            record = wc.Record()
            record.__dict__.update(kind=failure.kind, message=failure.message)
            return wc.Variant("err", record)

    return guarded


@_guarded
def _probe(context: RequestContext, fuel: Fuel, source: wc.Variant) -> wc.Variant:
    info = probe_source(context, fuel, (source.tag, source.payload))
    return wc.Variant("ok", _record(info, exclude=()))


@_guarded
def _render(context: RequestContext, fuel: Fuel, source: wc.Variant, pipeline: str) -> wc.Variant:
    rendered = render_source(context, fuel, (source.tag, source.payload), pipeline)
    return wc.Variant("ok", _record(rendered, exclude=("data",), length=len(rendered.data)))


def _record(value: ImageInfo | Rendered, exclude: tuple[str, ...], **extra: Any) -> wc.Record:
    record = wc.Record()
    fields = {k.replace("_", "-"): v for k, v in value.__dict__.items() if k not in exclude}
    record.__dict__.update(fields, **extra)
    return record


# Natively, for edgefn.testing ------------------------------------------------


def native_backend(*, body: bytes, assets: Path | None) -> NativeImages:
    """The image capability for one request run natively (`edgefn.testing`'s
    entry point `edgefn.testing:image`), under the default `Limits()`."""
    return NativeImages(body, assets)


class NativeImages:
    """`edgefn.image`'s backend without a sandbox: the host code the sandbox runs,
    with the same checks (asset paths, the 64 KiB `bytes` source, pixel, memory,
    fuel and deadline budgets), so outputs and failures are the sandbox's.

    `source` is the SDK's `(kind, value)`: `("body", None)`, `("asset", name)` or
    `("bytes", data)`. Each method raises the `ImageFailure` (`kind`, `message`)
    the host function would have answered the guest with. For a broken budget
    (`memory_limit`, `timeout`, `budget_exceeded`) the sandbox then ends the
    request with the `SandboxError` in `breach`; natively the failure is raised,
    and the request's fuel, now zero, refuses any further image work.
    """

    def __init__(self, body: bytes, assets: Path | None, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.context = RequestContext(Path(assets) if assets is not None else None)
        self.context.begin(Request("GET", body=body), limits, [ImageCapability()])
        self.fuel = CountedFuel(limits.fuel)

    @property
    def breach(self) -> SandboxError | None:
        """The limit the image work broke, which the sandbox would answer with."""
        return self.context.breach

    @property
    def pixels(self) -> int:
        """Pixels the image work decoded, produced, stamped or encoded so far."""
        state: ImageState = self.context.states[ImageCapability.name]
        return state.pixels

    def probe(self, source: tuple[str, Any]) -> ImageInfo:
        return self._run(lambda: probe_source(self.context, self.fuel, self._source(source)))

    def render(self, source: tuple[str, Any], pipeline: str) -> Rendered:
        """The rendered image: `data`, `content_type`, `width`, `height`, `format`."""
        return self._run(
            lambda: render_source(self.context, self.fuel, self._source(source), pipeline)
        )

    def _source(self, source: tuple[str, Any]) -> Source:
        kind, value = source
        if kind == "bytes":
            data = bytes(value)
            self.context.take_output = lambda length: data[:length]
            return ("bytes", len(data))
        return (kind, value)

    def _run(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except Exception as exc:
            raise _as_failure(exc) from None
