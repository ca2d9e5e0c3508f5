"""The HTTP/1.1 protocol both listeners speak: uvicorn's httptools protocol with
the limits it lacks against slow or abusive clients.

uvicorn times out only idle kept-alive connections: a client that sends one
header byte a second (slowloris), a body that never ends, or a connection that
never sends anything holds a socket and its memory for ever, and header bytes
are not bounded at all. Here a request's head must arrive within
`header_timeout` of the connection (or of the request's first byte), its body
within `body_timeout` of the moment the app first asks for it (or of the
response, if the app answers without reading it), and the head may be
`max_head` bytes. Protocol errors are answered in the gateway's JSON error shape,
with an `X-Request-Id` like every other response.

The body clock starts when the app reads, not with the head, because the public
app may make a request wait for room in its body budget first (`_bodies.py`):
until the app asks, uvicorn stops reading after 64 KiB, so that wait is the
gateway's, not the client's, and bounded by the app's own `queue_wait`.

The public listener asks its app to answer a GET without a body at once first
(`answer_now`, `PublicApp.answer_now`): when it can, the response is written in
one go, without an ASGI cycle; when it cannot, the request goes on as above.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from ._request_ids import request_id
from ._streams import ABORT_EXTENSION, CLOSE_EXTENSION, GONE_EXTENSION

if TYPE_CHECKING:
    from uvicorn._types import ASGIReceiveEvent

__all__ = ["AnswerNow", "guarded_protocol"]

log = logging.getLogger("edgefn.gateway")

# A GET's response made at once, or None: (path, raw path, query, headers) ->
# the response. The path is decoded, the headers' names lower-case.
AnswerNow = Callable[[str, bytes, bytes, list[tuple[bytes, bytes]]], Response | None]

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def guarded_protocol(
    header_timeout: float,
    body_timeout: float,
    max_head: int = 64 * 1024,
    answer_now: AnswerNow | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's protocol class with these limits, for `uvicorn.Config(http=...)`,
    asking `answer_now` first for each GET without a body."""
    attributes = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_head": max_head,
        "answer_now": None if answer_now is None else staticmethod(answer_now),
    }
    return type("GuardedProtocol", (_Guarded,), attributes)


class _Guarded(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 30.0
    max_head = 64 * 1024
    answer_now: AnswerNow | None = None
    _timer: asyncio.TimerHandle | None = None
    _stall: asyncio.TimerHandle | None = None  # the client has taken nothing for a while
    _cycles: weakref.WeakSet[RequestResponseCycle]  # of this connection, still running
    _head_bytes = 0
    _answered = False  # the current request was answered at once: it has no cycle
    _at_once_left = 0  # of this read's requests, how many more may be answered at once

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycles = weakref.WeakSet()
        self._arm(self.header_timeout, "the request head did not arrive in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._stall is not None:
            self._stall.cancel()
        super().connection_lost(exc)
        # uvicorn tells only the newest request; one still streaming its response
        # behind a pipelined one must learn it too, or it writes on to nobody.
        for cycle in list(self._cycles):
            if not cycle.response_complete:
                _disconnect(cycle)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._watch_writes(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _watch_writes(self, waiting: int) -> None:
        self._stall = self.loop.call_later(self.body_timeout, self._stalled, waiting)

    def _stalled(self, waiting: int) -> None:
        """A client that took nothing of a response for `body_timeout` is dropped,
        with what waited for it: uvicorn would wait for it for ever. One that
        reads, however slowly, is not."""
        self._stall = None
        now = self.transport.get_write_buffer_size()
        if now < waiting:
            self._watch_writes(now)
        else:
            self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request answered at once armed the keep-alive timeout: the next one,
        # pipelined behind it in the same read, must not be cut off by it.
        self._unset_keepalive_if_required()
        self._head_bytes = 0
        self._answered = False
        self._arm(self.header_timeout, "the request head did not arrive in time")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        if self.answer_now is not None and self._answer_at_once():
            return
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:
            self._start_body_clock_on_read(self.cycle)

    def _start_body_clock_on_read(self, cycle: RequestResponseCycle) -> None:
        # Both weakly: the cycle holds this function, and a strong reference
        # back would leave every request's objects to the cyclic collector,
        # whose pauses made p99 ~90 ms instead of ~8 (`bench/gateway.py`). The
        # app calls it while its task, which holds the cycle, runs.
        weak_cycle, weak_protocol = weakref.ref(cycle), weakref.ref(self)
        self._cycles.add(cycle)

        async def receive_and_time() -> ASGIReceiveEvent:
            cycle, protocol = weak_cycle(), weak_protocol()
            if cycle is None or protocol is None:  # called after its request's end
                return {"type": "http.disconnect"}
            if cycle.more_body and protocol._timer is None and protocol.cycle is cycle:
                protocol._arm_body_timer()
            return await RequestResponseCycle.receive(cycle)

        # The cycle's own attribute: uvicorn passes `self.receive` to the app.
        cycle.receive = receive_and_time  # type: ignore[method-assign]

        def abort() -> None:
            cycle = weak_cycle()
            if cycle is not None and not cycle.response_complete:
                # Disconnected for uvicorn: it sends nothing more, and does not log
                # that the app returned without ending the response.
                cycle.disconnected = True
                cycle.transport.close()

        def close_after() -> None:
            cycle = weak_cycle()
            if cycle is not None:
                cycle.keep_alive = False  # uvicorn closes once the response is out

        extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
        extensions[ABORT_EXTENSION] = abort
        extensions[CLOSE_EXTENSION] = close_after
        extensions[GONE_EXTENSION] = self.loop.create_future()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and self._timer is None:
            # Answered without reading the whole body: its rest must still arrive in time.
            self._arm_body_timer()

    def _arm_body_timer(self) -> None:
        self._arm(self.body_timeout, "the request body did not arrive in time")

    def on_body(self, body: bytes) -> None:
        if not self._answered:  # dropped behind an answer that closed: it has no cycle
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._answered:
            super().on_message_complete()

    def _answer_at_once(self) -> bool:
        """Answer the request whose head just arrived without an ASGI cycle, if the
        app can (`answer_now`): only a GET, with no `Expect` or upgrade, and not
        while a response is still being written for an earlier request of the
        connection (pipelining keeps its order), the client is not reading (the
        answer would only add to what waits to be sent), or another request of
        the same read was answered at once: the rest of a pipelined batch waits
        its turn in uvicorn's pipeline, so one read cannot hold the loop for
        many function runs."""
        if self.transport.is_closing():
            # An earlier answer closed the connection (HTTP/1.0, `Connection:
            # close`); what the client pipelined behind it is not run.
            self._answered = True
            return True
        parser = self.parser
        cycle = self.cycle
        if (
            not self._at_once_left
            or parser.get_method() != b"GET"
            or (cycle is not None and not cycle.response_complete)
            or self.flow.write_paused
            or self.expect_100_continue
            or parser.should_upgrade()
        ):
            return False
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")  # as uvicorn decodes it: the parser took ASCII only
        if "%" in path:
            path = unquote(path)
        assert self.answer_now is not None
        response = self.answer_now(path, url.path, url.query or b"", self.headers)
        if response is None:
            return False
        self._answered, self._at_once_left = True, self._at_once_left - 1
        # No cycle of its own: the last one is done, and must not arm timers for it.
        self.cycle = None  # type: ignore[assignment]  # as uvicorn starts it
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        self._write(response, keep_alive)
        return True

    def _write(self, response: Response, keep_alive: bool) -> None:
        """The response's head and body in one write, as uvicorn would send them:
        its default headers (date, server) first, each header checked."""
        content: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for headers in (self.server_state.default_headers, response.raw_headers):
            for name, value in headers:
                if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                    # Every header was checked before (the sandbox, `request_id`).
                    log.error("a response header is not valid HTTP: %r", name)
                    self._refuse(500, "internal_error", "the response could not be sent")
                    return
                content += (name.lower(), b": ", value, b"\r\n")
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", response.body)
        self.transport.write(b"".join(content))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's: count it, arm the keep-alive timeout

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head:
            self._refuse(
                431,
                "request_head_too_large",
                f"the request line and headers exceed {self.max_head} bytes",
            )
            # Stop the parser: httptools turns a callback's exception into a parse error.
            raise _Refused

    def _arm(self, seconds: float, message: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire, message)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, message: str) -> None:
        self._timer = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # too late for a status; just stop waiting
        else:
            self._refuse(408, "request_timeout", message)

    def _writing(self) -> RequestResponseCycle | None:
        """A request of this connection whose response is being written (a streamed
        one): not always `self.cycle`, which uvicorn moves to the newest request
        as soon as a pipelined head is parsed."""
        for cycle in self._cycles:
            if cycle.response_started and not cycle.response_complete:
                return cycle
        return None

    def _refuse(self, status: int, code: str, message: str) -> None:
        if self.transport.is_closing():
            return
        writing = self._writing()
        if writing is not None:
            # An answer of ours would land inside that response's body: close.
            for cycle in (writing, self.cycle):
                if cycle is not None:
                    _disconnect(cycle)
            self.transport.close()
            return
        # Always a new id: the client's X-Request-Id may not have been parsed yet,
        # or be part of what is refused.
        rid = request_id(None)
        error = {"code": code, "message": message, "request_id": rid}
        body = json.dumps({"error": error}).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: {rid}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()
        if self.cycle is not None:
            _disconnect(self.cycle)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: ignore what the client still sends
        self._at_once_left = 1
        super().data_received(data)


def _disconnect(cycle: RequestResponseCycle) -> None:
    """Tell a request its client is gone, as uvicorn's `connection_lost` does, and
    whoever waits on its `GONE_EXTENSION`."""
    cycle.disconnected = True
    cycle.message_event.set()
    extensions: dict[str, Any] = cycle.scope.get("extensions") or {}
    gone: asyncio.Future[None] | None = extensions.get(GONE_EXTENSION)
    if gone is not None and not gone.done():
        gone.set_result(None)


class _Refused(Exception):
    pass
