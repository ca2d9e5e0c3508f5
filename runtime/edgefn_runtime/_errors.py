"""edgefn's runtime errors, and the one place wasmtime failures become them."""

from __future__ import annotations

import wasmtime

from ._limits import Limits
from ._messages import Usage

__all__ = [
    "BodyTooLarge",
    "EdgefnError",
    "FuelExhausted",
    "GuestCrashed",
    "GuestError",
    "InvalidComponent",
    "InvalidResponse",
    "MemoryLimitExceeded",
    "ResponseTooLarge",
    "SandboxError",
    "Timeout",
]


class EdgefnError(Exception):
    """The root of every error edgefn raises on the host, as click's exceptions are.

    Each class carries what its callers need to answer it without a table of
    their own: `code` is stable (HTTP error bodies, logs, metrics), `status` is
    the HTTP status the gateway answers with, `exit_code` what the CLI exits with.
    Every package's errors (runtime, registry, gateway, CLI) derive from it.
    """

    code = "edgefn_error"
    status = 500
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidComponent(EdgefnError):
    """The file is not a component implementing edgefn's handler world."""

    code = "invalid_component"
    status = 400


class SandboxError(EdgefnError):
    """A request failed inside the sandbox. The process stays healthy.

    `logs` and `usage` are what the request produced before it failed.
    """

    code = "sandbox_error"
    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.logs: list[str] = []
        self.usage = Usage()


class Timeout(SandboxError):
    code = "timeout"
    status = 504


class FuelExhausted(SandboxError):
    code = "fuel_exhausted"
    status = 503


class MemoryLimitExceeded(SandboxError):
    code = "memory_limit"
    status = 503


class BodyTooLarge(SandboxError):
    code = "body_too_large"
    status = 413


class ClientClosed(SandboxError):
    """The client left before the function had its whole request body: nobody
    reads the answer; 499 as nginx logs it."""

    code = "client_closed_request"
    status = 499


class ResponseTooLarge(SandboxError):
    code = "response_too_large"


class GuestError(SandboxError):
    """The function raised an exception it did not handle."""

    code = "function_error"
    status = 500

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


class GuestCrashed(SandboxError):
    """The guest trapped for a reason other than a limit."""

    code = "function_crashed"


class InvalidResponse(SandboxError):
    """The guest answered, but not with something the gateway may pass on: a
    status outside 200-599 (a 1xx such as `101 Switching Protocols` would turn a
    proxy's upstream connection into a raw tunnel) or a header that is not valid
    HTTP."""

    code = "invalid_response"


def from_load_failure(error: wasmtime.WasmtimeError, problem: str) -> InvalidComponent:
    """Classify a wasmtime failure while compiling, checking or linking a component:
    `problem` says what could not be done, wasmtime's first line says why."""
    reason = str(error).splitlines()[0] if str(error) else "unknown reason"
    return InvalidComponent(f"{problem}: {reason}")


def from_trap(error: Exception, limits: Limits, *, fuel_left: int, logs: list[str]) -> SandboxError:
    """Classify a wasmtime failure during instantiate or call."""
    if isinstance(error, wasmtime.ExitTrap):
        # os._exit() in the guest: no response, like sys.exit(), which the SDK reports.
        # WASI's exit carries only ok/error, so the guest's status number is lost.
        return GuestError("SystemExit", "the function exited (os._exit) without a response")
    text = str(error)
    if "wasm trap: interrupt" in text:
        return Timeout(f"the function ran past its wall-clock timeout of {limits.timeout:g} s")
    if fuel_left == 0 or "all fuel consumed" in text:
        return FuelExhausted(f"the function used all of its fuel ({limits.fuel:,} units)")
    if _out_of_memory(text, logs):
        return _memory_limit(limits)
    return GuestCrashed(f"the function crashed: {_trap_reason(text)}")


def from_guest_error(kind: str, message: str, limits: Limits) -> SandboxError:
    """Classify an exception the SDK reported through the contract."""
    if kind == "MemoryError":
        return _memory_limit(limits)
    return GuestError(kind, message)


def _memory_limit(limits: Limits) -> MemoryLimitExceeded:
    return MemoryLimitExceeded(
        f"the function needed more than its memory limit of {limits.memory / 1024**2:g} MiB"
    )


def _out_of_memory(text: str, logs: list[str]) -> bool:
    tail = "\n".join(logs[-5:])
    return any(
        s in text or s in tail for s in ("MemoryError", "memory allocation of", "out of memory")
    )


def _trap_reason(text: str) -> str:
    for line in text.splitlines():
        if "wasm trap:" in line:
            return line.split("wasm trap:", 1)[1].strip()
    return text.splitlines()[0] if text else "unknown trap"
