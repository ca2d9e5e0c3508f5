"""Host capabilities: what a sandboxed function may ask of the host beyond WASI.

Each capability is one module or package here with the same shape (see
`Capability`): its WIT interface name, its host functions linked once per
engine, its per-request state in the shared `RequestContext`, and what it adds
to a request's `Usage`. `Engine(capabilities=...)` links the ones given,
`installed()` by default; the engine, sandbox and instance name none of them.
"""

from __future__ import annotations

from ..cache import HttpCache
from ._base import Capability, Fuel, RequestContext, host_call
from .image import ImageCapability
from .outbound import OutboundCapability, OutboundPolicy

__all__ = [
    "Capability",
    "Fuel",
    "ImageCapability",
    "OutboundCapability",
    "RequestContext",
    "host_call",
    "installed",
]


def installed(
    outbound: OutboundPolicy | None = None, cache: HttpCache | None = None
) -> list[Capability]:
    """The capabilities an engine links unless told otherwise; `outbound` is the
    operator's outbound HTTP policy (the safe defaults when None), `cache` the
    node's HTTP cache, which keeps what functions fetch too (None: nothing is)."""
    return [ImageCapability(), OutboundCapability(outbound, cache)]
