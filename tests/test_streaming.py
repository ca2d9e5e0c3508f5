"""Streamed responses in the sandbox (`edgefn:http/response-stream`): what reaches
the `ResponseSink` the gateway gives, and when. The gateway's side, a real
client's view of it, is in test_hostile_functions.py."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from edgefn_runtime import (
    GuestError,
    InvalidResponse,
    Limits,
    Outcome,
    Request,
    ResponseTooLarge,
    Sandbox,
    Timeout,
)
from edgefn_runtime._handle_call import decode_headers, head_problem

pytestmark = pytest.mark.wasm


@dataclass
class Sink:
    """Records what it is given; answers `write` with `reading` (or raises it)."""

    takes: bool = True
    reading: bool | type[Exception] = True
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def start(self, status: int, headers: list[tuple[str, str]]) -> bool:
        self.events.append(("start", status, headers))
        return self.takes

    def write(self, chunk: bytes, timeout: float) -> bool:
        assert 0 < timeout <= Limits().timeout
        self.events.append(("write", chunk))
        if not isinstance(self.reading, bool):
            raise self.reading
        return self.reading


def stream(sandbox: Sandbox, query: str, sink: Sink | None, **limits: Any) -> Outcome:
    return sandbox.invoke(Request("GET", "/stream", query), replace(Limits(), **limits), sink)


def test_the_head_goes_first_then_each_chunk_as_it_is_made(hostile: Sandbox) -> None:
    sink = Sink()
    outcome = stream(hostile, "chunks=3&size=4", sink)
    assert sink.events == [
        ("start", 200, [("x-streamed", "yes")]),
        ("write", b"0000"),
        ("write", b"1111"),
        ("write", b"2222"),
    ]
    assert outcome.response.body == b"" and outcome.logs == ["made 3 chunks"]


@pytest.mark.parametrize("sink", [None, Sink(takes=False)], ids=["no sink", "sink declines"])
def test_without_a_sink_that_takes_it_the_body_comes_whole(
    hostile: Sandbox, sink: Sink | None
) -> None:
    outcome = stream(hostile, "chunks=3&size=4&status=201", sink)
    response = outcome.response
    assert (response.status, response.body) == (201, b"000011112222")
    assert response.headers == [("x-streamed", "yes")]
    assert sink is None or sink.events == [("start", 201, [("x-streamed", "yes")])]


def test_a_client_that_went_away_stops_the_function_at_its_next_chunk(hostile: Sandbox) -> None:
    sink = Sink(reading=False)
    outcome = stream(hostile, "chunks=100&size=4", sink)
    # The generator is closed at once: its `finally` ran after the first chunk.
    assert outcome.logs == ["made 1 chunks"] and len(sink.events) == 2


def test_a_streamed_body_past_the_response_limit_is_stopped_there(hostile: Sandbox) -> None:
    sink = Sink()
    with pytest.raises(ResponseTooLarge, match="limit of 25 bytes"):
        stream(hostile, "chunks=5&size=10", sink, max_response=25)
    assert [event[0] for event in sink.events] == ["start", "write", "write"]


def test_a_client_too_slow_for_the_deadline_times_the_request_out(hostile: Sandbox) -> None:
    with pytest.raises(Timeout, match="did not read the streamed response"):
        stream(hostile, "chunks=5&size=10", Sink(reading=TimeoutError))


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/stream-bad-header", InvalidResponse),  # checked as a whole response's head is
        ("/stream?fail=1", GuestError),  # raised before the first chunk: nothing began
    ],
)
def test_a_response_failing_before_its_first_chunk_never_reaches_the_sink(
    hostile: Sandbox, path: str, error: type[Exception]
) -> None:
    sink = Sink()
    route, _, query = path.partition("?")
    with pytest.raises(error):
        hostile.invoke(Request("GET", route, query), Limits(), sink)
    assert sink.events == []


def test_a_reused_instance_streams_each_of_its_requests(reused: Sandbox) -> None:
    for i in range(1, 5):  # of its 5
        sink = Sink()
        outcome = stream(reused, f"chunks={i}&size=1000", sink)
        written = b"".join(chunk for _, chunk in sink.events[1:])
        assert written == b"".join(str(n).encode() * 1000 for n in range(i))
        assert outcome.response.body == b""
    assert reused.idle == 1  # one instance served them all


def test_each_send_is_charged_fuel_so_a_byte_at_a_time_pays_for_its_host_calls(
    hostile: Sandbox,
) -> None:
    def fuel(count: int) -> int:
        request = Request("GET", "/stream-bytes", f"count={count}")
        outcome = hostile.invoke(request, Limits(), Sink())
        return outcome.usage.fuel

    # 1,000 more sends (and as many empty chunks, which the SDK does not send).
    assert fuel(1010) - fuel(10) >= 1000 * 20_000


def test_a_header_block_is_split_no_further_than_one_line_past_the_cap() -> None:
    # Megabytes of line feeds from a guest (a streamed head or a whole one) must not
    # become millions of tuples before they are counted and refused.
    headers = decode_headers("\n" * 5_000_000)
    assert len(headers) == 101 and isinstance(head_problem(200, headers), ResponseTooLarge)
    assert decode_headers("a: 1\nb: 2\n") == [("a", "1"), ("b", "2")]
