"""One component instance in its own store, serving requests one at a time."""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

import wasmtime
from wasmtime import component as wc

from . import _wasmtime
from ._errors import (
    GuestCrashed,
    InvalidResponse,
    ResponseTooLarge,
    SandboxError,
    from_guest_error,
    from_trap,
)
from ._handle_call import GuestFailure, HandleParam, call_handle, head_problem
from ._limits import Limits
from ._messages import Outcome, Request, RequestSource, Response, ResponseSink, Usage
from ._stdio import GuestFiles, GuestOutput
from .capabilities import RequestContext

if TYPE_CHECKING:
    from ._sandbox import Sandbox

__all__ = ["Instance"]

ASSETS_GUEST_PATH = "/assets"
# A reusable instance's stdout and stderr hold this many requests at their
# limits before the instance is retired; punched holes keep host memory low.
_REUSE_STRETCHES = 4


class Instance:
    """A store, its WASI stdio and (once `serve` first runs) the instance.

    A single-use instance gets its only request's body as stdin up front; a
    reusable one (`body=None`) gets each body in its `GuestFiles`, where
    capabilities granted to the function also leave files for it. So does a
    single-use one made before its request is known (`body=None, single_use=True`,
    see `_ahead.py`), which `instantiate()` readies then. Fuel, the wall-clock
    deadline and the memory limit are set anew for every request.
    """

    def __init__(
        self, sandbox: Sandbox, limits: Limits, body: bytes | None, *, single_use: bool = False
    ) -> None:
        # What it needs of the sandbox, not the sandbox: an idle instance sits in
        # its sandbox's pool, and a reference back would make a cycle that only
        # the garbage collector, at some later point, could free.
        self._engine, self._component = sandbox.engine, sandbox.component
        self._handle_index = sandbox.handle_index
        self._capabilities = sandbox.engine.capabilities
        # Room in stdout for what the guest hands capabilities, besides the body.
        self._stdout_reserve = sandbox.engine.stdout_reserve
        self.context = RequestContext(sandbox.assets, sandbox.grants)
        self.store = wasmtime.Store(sandbox.engine.wasmtime, data=self.context)
        self.requests = 0
        self.broken = False
        self._handle: wc.Func | None = None
        # Made ahead: the fuel instantiating burnt, charged to the first request as
        # if it had instantiated, and the memory limit it was made under.
        self._fuel_spent = 0
        self._made_memory = 0
        config = wasmtime.WasiConfig()
        config.env = list(sandbox.env.items())
        if sandbox.assets is not None:
            config.preopen_dir(str(sandbox.assets), ASSETS_GUEST_PATH, fs_mutable=False)
        for guest, host in sandbox.directories.items():
            config.preopen_dir(str(host), guest, fs_mutable=False)
        stretches = 1 if body is not None or single_use else _REUSE_STRETCHES
        self._body_in_file = body is None
        self._param = HandleParam(self._body_in_file)
        files = GuestFiles(config) if body is None or sandbox.needs_files else None
        if body is not None:
            _wasmtime.set_stdin_bytes(config, body)
        opened: list[GuestFiles | GuestOutput] = [files] if files else []
        try:
            self._stdout = _output(
                config, "stdout", limits.max_response + self._stdout_reserve, stretches
            )
            opened.append(self._stdout)
            self._stderr = _output(config, "stderr", limits.max_log, stretches)
            opened.append(self._stderr)
        except BaseException:
            _close_all(opened)
            raise
        # Closes the files exactly once: from close(), or when an idle reusable
        # instance is dropped with its sandbox, or at exit.
        self._finalizer = weakref.finalize(self, _close_all, opened)
        self.context.take_output = self._stdout.take
        self._files = files
        if files is not None:
            self.context.put_file = files.put
        self.store.set_wasi(config)

    @property
    def instantiated(self) -> bool:
        return self._handle is not None

    def fits(self, limits: Limits) -> bool:
        """Whether this instance can take another request under `limits`."""
        return (
            not self.broken
            and self._stdout.fits(limits.max_response + self._stdout_reserve)
            and self._stderr.fits(limits.max_log)
        )

    def instantiate(self, limits: Limits) -> None:
        """Instantiate now, ahead of the request, under `limits` (memory, fuel and
        deadline); raises `wasmtime.WasmtimeError` if it traps."""
        deadline = self._engine.epoch_deadline(limits.timeout)
        _wasmtime.prepare(self.store, limits.memory, limits.fuel, deadline)
        self._handle = self._instantiate()
        self._fuel_spent = limits.fuel - _wasmtime.get_fuel(self.store)
        self._made_memory = limits.memory

    def ready_for(self, limits: Limits) -> bool:
        """Whether this instance, made ahead for its first request, serves one under
        `limits` exactly as an instance made for that request would: the same
        stdout and stderr sizes, and limits its instantiating stayed within
        (a larger memory limit or budget would have let it instantiate the same)."""
        stdout = GuestOutput.stretch(limits.max_response + self._stdout_reserve)
        return (
            self.requests == 0
            and not self.broken
            and self.instantiated
            and self._stdout.capacity == stdout
            and self._stderr.capacity == GuestOutput.stretch(limits.max_log)
            and limits.memory >= self._made_memory
            and limits.fuel > self._fuel_spent
        )

    def serve(
        self,
        request: Request,
        limits: Limits,
        *,
        on_loop: bool = False,
        ticks: int | None = None,
        sink: ResponseSink | None = None,
        source: RequestSource | None = None,
    ) -> Outcome:
        """Run one request; on any failure the instance is marked broken.

        `on_loop`: the caller is an event loop, so a host call stops the guest
        (`HostCallOnLoop`); `ticks`: an epoch deadline no longer than `limits.timeout`'s;
        `sink` and `source`: where a streamed response goes and a streamed request
        body comes from (see `Sandbox.invoke`).
        """
        try:
            return self._serve(request, limits, on_loop, ticks, sink, source)
        except BaseException:
            self.broken = True
            raise

    def _serve(
        self,
        request: Request,
        limits: Limits,
        on_loop: bool,
        ticks: int | None,
        sink: ResponseSink | None,
        source: RequestSource | None,
    ) -> Outcome:
        store, context, engine = self.store, self.context, self._engine
        context.begin(
            request, limits, self._capabilities, on_loop=on_loop, sink=sink, source=source
        )
        if self._body_in_file:
            assert self._files is not None, "a body file comes with its files"
            self._files.put("body", request.body)
        # Instantiated ahead, it already burnt some of this request's fuel: what
        # is left is what it would have left after instantiating now.
        fuel, self._fuel_spent = limits.fuel - self._fuel_spent, 0
        if ticks is None:
            ticks = engine.epoch_deadline(limits.timeout)
        _wasmtime.prepare(store, limits.memory, fuel, ticks)
        self.requests += 1
        usage = Usage()
        trap: wasmtime.WasmtimeError | None = None
        started = time.perf_counter()
        try:
            if self._handle is None:
                self._handle = self._instantiate()
                usage.instantiate_seconds = time.perf_counter() - started
            head = call_handle(store, self._handle, self._param, request, source is not None)
        except wasmtime.WasmtimeError as exc:
            # Without its traceback: the traceback's frames hold this instance and its
            # store in a reference cycle, which kept each failed instance's memory
            # (tens of MB) alive until the cyclic GC ran; under a stream of traps
            # a worker's RSS grew by hundreds of MB.
            trap = exc.with_traceback(None)
        except BaseException:
            self._finish_capabilities(usage)  # they may hold connections, files, ...
            raise
        usage.execute_seconds = time.perf_counter() - started - usage.instantiate_seconds
        fuel_left = _wasmtime.get_fuel(store)
        usage.fuel = limits.fuel - fuel_left
        self._finish_capabilities(usage)
        logs, truncated = self._stderr.take_text_lines(limits.max_log)
        if truncated:
            logs.append(
                f"[edgefn] log limit of {limits.max_log} bytes reached; later output dropped"
            )

        def fail(error: SandboxError) -> SandboxError:
            error.usage, error.logs = usage, logs
            return error

        if context.breach is not None:  # host work broke a limit; the guest can't hide it
            raise fail(context.breach) from None
        if trap is not None:
            raise fail(from_trap(trap, limits, fuel_left=fuel_left, logs=logs)) from None
        if isinstance(head, GuestFailure):
            raise fail(from_guest_error(head.kind, head.message, limits))
        if context.response_head is not None:  # streamed: its head was checked and sent
            if head.written is not None:  # bytes left on stdout would start the next body
                raise fail(InvalidResponse("the function answered with a body after streaming one"))
            status, headers = context.response_head
            return Outcome(Response(status, headers, context.response_body or b""), usage, logs)
        problem = head_problem(head.status, head.headers)
        if problem is not None:
            raise fail(problem)
        written = head.written
        if written is None:
            if context.response_body is None:
                raise fail(
                    GuestCrashed("the function sent a host-rendered body but none was rendered")
                )
            body = context.response_body
        elif written > limits.max_response:
            raise fail(
                ResponseTooLarge(
                    f"response body exceeds the limit of {limits.max_response} bytes "
                    f"(the function tried to send at least {written})"
                )
            )
        else:
            body = self._stdout.take(written)
        return Outcome(Response(head.status, head.headers, body), usage, logs)

    def _finish_capabilities(self, usage: Usage) -> None:
        for capability in self._capabilities:
            capability.finish(self.context.states[capability.name], usage)
        # An idle instance keeps no client's connection.
        self.context.sink = self.context.source = None
        if self._files is not None:
            self._files.clear()

    def _instantiate(self) -> wc.Func:
        instance = self._engine.linker.instantiate(self.store, self._component)
        handle = instance.get_func(self.store, self._handle_index)
        assert handle is not None, "check_component() vouched for this export"
        return handle

    def close(self) -> None:
        """Free the stdio files now; the store goes with the last reference."""
        self._finalizer()
        self._handle = None
        self.broken = True


def _close_all(streams: list[GuestFiles | GuestOutput]) -> None:
    for stream in streams:
        stream.close()


def _output(config: wasmtime.WasiConfig, stream: str, limit: int, stretches: int) -> GuestOutput:
    return GuestOutput(config, stream, stretches * GuestOutput.stretch(limit))
