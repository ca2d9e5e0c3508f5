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
from .dev import DevCapability, DevSource
from .image import ImageCapability
from .kv import KeyValueBackend, KeyValueCapability
from .outbound import OutboundCapability, OutboundPolicy
from .request_stream import RequestStreamCapability
from .secrets import SecretsCapability, SecretSource
from .stream import StreamCapability

__all__ = [
    "Capability",
    "DevCapability",
    "DevSource",
    "Fuel",
    "ImageCapability",
    "KeyValueCapability",
    "OutboundCapability",
    "RequestContext",
    "RequestStreamCapability",
    "SecretsCapability",
    "StreamCapability",
    "host_call",
    "installed",
]


# The operator's maximum `max_kv_value` by default (edgefn_platform's policy).
_KV_MAX_VALUE = 25 * 2**20


def installed(
    outbound: OutboundPolicy | None = None,
    cache: HttpCache | None = None,
    kv: KeyValueBackend | None = None,
    secrets: SecretSource | None = None,
    kv_max_value: int = _KV_MAX_VALUE,
    dev: bool = False,
) -> list[Capability]:
    """The capabilities an engine links unless told otherwise; `outbound` is the
    operator's outbound HTTP policy (the safe defaults when None), `cache` the
    node's HTTP cache, which keeps what functions fetch too (None: nothing is);
    `kv` keeps the functions' key-value stores (None: every operation answers
    `unavailable`), whose values are at most `kv_max_value` bytes (the operator's
    maximum `max_kv_value`); `secrets(function, name)` gives the operator's
    secrets (None: every declared secret reads as unset); streamed responses,
    always; streamed request bodies, for the functions granted them; `dev` links
    the dev runner's capability too, for `edgefn dev` alone."""
    capabilities: list[Capability] = [
        ImageCapability(),
        OutboundCapability(outbound, cache),
        KeyValueCapability(kv, kv_max_value),
        SecretsCapability(secrets),
        StreamCapability(),
        RequestStreamCapability(),
    ]
    if dev:
        capabilities.append(DevCapability())
    return capabilities
