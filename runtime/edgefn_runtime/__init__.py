"""edgefn's WebAssembly runtime: every request in a fresh, limited wasmtime sandbox.

>>> from edgefn_runtime import Engine, Limits, Request
>>> engine = Engine()
>>> sandbox = engine.load("hello.wasm")
>>> outcome = sandbox.invoke(Request("GET", "/"), Limits(timeout=1.0))
>>> outcome.response.status
200
"""

from ._contract import CONTRACT_VERSION
from ._engine import Engine, default_cache_dir
from ._errors import (
    BodyTooLarge,
    ClientClosed,
    EdgefnError,
    FuelExhausted,
    GuestCrashed,
    GuestError,
    InvalidComponent,
    InvalidResponse,
    MemoryLimitExceeded,
    ResponseTooLarge,
    SandboxError,
    Timeout,
)
from ._limits import MIN_MEMORY, Limits
from ._messages import (
    LOOP_TOKEN,
    MAX_LOOPS,
    WARM_UP_HEADER,
    Outcome,
    Request,
    RequestSource,
    Response,
    ResponseSink,
    Usage,
)
from ._sandbox import Sandbox

__all__ = [
    "CONTRACT_VERSION",
    "LOOP_TOKEN",
    "MAX_LOOPS",
    "WARM_UP_HEADER",
    "MIN_MEMORY",
    "BodyTooLarge",
    "ClientClosed",
    "EdgefnError",
    "Engine",
    "FuelExhausted",
    "GuestCrashed",
    "GuestError",
    "InvalidComponent",
    "InvalidResponse",
    "Limits",
    "MemoryLimitExceeded",
    "Outcome",
    "Request",
    "RequestSource",
    "Response",
    "ResponseSink",
    "ResponseTooLarge",
    "Sandbox",
    "SandboxError",
    "Timeout",
    "Usage",
    "default_cache_dir",
]
