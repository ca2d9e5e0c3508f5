"""The worker's body budget on its own: who gets in, who waits, who is refused; and
a body read as it arrives (`BodyStream`), in-process."""

from __future__ import annotations

import asyncio

import pytest
from cycles import cyclic_garbage

from edgefn_platform.gateway._bodies import BodyBudget, BodyStream
from edgefn_platform.gateway._errors import GatewayError
from waiting import until


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def test_bodies_that_fit_are_held_at_once_and_released() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=1)
        await budget.reserve(60)
        await budget.reserve(40)
        assert budget.held == 100
        budget.release(60)
        budget.release(40)
        assert budget.held == 0

    run(main())


def test_past_the_budget_a_body_waits_then_is_refused_with_overloaded() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=0.05)
        await budget.reserve(80)
        with pytest.raises(GatewayError) as refused:
            await budget.reserve(30)
        assert (refused.value.status, refused.value.code) == (503, "overloaded")
        assert refused.value.headers == {"retry-after": "1"}
        assert budget.held == 80 and not budget._waiting

    run(main())


def test_waiting_bodies_get_in_first_come_first_served() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=5)
        await budget.reserve(100)
        order: list[int] = []

        async def wait_for(size: int) -> None:
            await budget.reserve(size)
            order.append(size)

        big = asyncio.create_task(wait_for(90))
        await until(lambda: len(budget._waiting) == 1, message="the big one in line")
        small = asyncio.create_task(wait_for(10))  # would fit after the first release
        await until(lambda: len(budget._waiting) == 2, message="the small one in line")
        budget.release(50)  # room for the small one, but the big one is first in line
        await asyncio.sleep(0.01)  # time for a waiter let in wrongly to run: none should
        assert order == []
        budget.release(50)
        await asyncio.gather(big, small)
        assert order == [90, 10] and budget.held == 100

    run(main())


def test_a_body_larger_than_the_budget_gets_it_to_itself() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=1)
        await budget.reserve(500)
        assert budget.held == 500
        with pytest.raises(GatewayError):
            budget.grow(1)
        budget.release(500)
        budget.grow(1)

    run(main())


def test_a_chunked_body_does_not_wait_while_holding_bytes() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=5)
        budget.grow(70)
        waiting = asyncio.create_task(budget.reserve(50))
        await until(lambda: budget._waiting, message="the reservation in line")
        with pytest.raises(GatewayError):
            budget.grow(10)  # fits, but someone is in line: no overtaking
        budget.release(70)
        await waiting
        assert budget.held == 50

    run(main())


def test_a_cancelled_wait_leaves_nothing_held() -> None:
    async def main() -> None:
        budget = BodyBudget(100, wait=5)
        await budget.reserve(100)
        waiting = asyncio.create_task(budget.reserve(50))
        await until(lambda: budget._waiting, message="the reservation in line")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        budget.release(100)
        assert budget.held == 0 and not budget._waiting

    run(main())


def test_a_body_stream_hands_over_each_message_in_the_sizes_asked() -> None:
    messages = [
        {"type": "http.request", "body": b"abcde", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"f", "more_body": False},
    ]

    async def scenario() -> tuple[list[bytes], BodyStream]:
        async def receive() -> dict[str, object]:
            return messages.pop(0)

        stream = BodyStream(receive, None)
        reads = [2, 10, 10, 10, 10]
        return [await asyncio.to_thread(stream.read, n, 5) for n in reads], stream

    chunks, stream = asyncio.run(scenario())
    assert chunks == [b"ab", b"cde", b"f", b"", b""]
    assert stream.received == 6 and stream.ended and not stream.gone


def test_a_body_stream_whose_client_leaves_raises_and_leaves_no_cycle() -> None:
    async def scenario() -> None:
        async def receive() -> dict[str, object]:
            return {"type": "http.disconnect"}

        stream = BodyStream(receive, None)
        with pytest.raises(ConnectionResetError, match="mid-body"):
            await asyncio.to_thread(stream.read, 10, 5)
        assert stream.gone and await stream.receive_after_body() == {"type": "http.disconnect"}

    with cyclic_garbage() as cyclic:
        asyncio.run(scenario())
    # The exception kept in a future held the reading frame, and it the future.
    assert "BodyStream" not in cyclic and "ConnectionResetError" not in cyclic, cyclic


def test_a_body_stream_times_out_and_its_message_waits_for_the_next_read() -> None:
    async def scenario() -> None:
        arrived = asyncio.Event()

        async def receive() -> dict[str, object]:
            await arrived.wait()
            return {"type": "http.request", "body": b"late", "more_body": False}

        stream = BodyStream(receive, None)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(stream.read, 10, 0.05)
        arrived.set()
        assert await asyncio.to_thread(stream.read, 10, 5) == b"late"

    asyncio.run(scenario())


def test_a_streamed_response_learns_its_client_left_while_the_body_is_unread() -> None:
    """The watcher of a response may not take the body's messages, but must not
    wait for them either: the protocol's `gone` future tells it."""

    async def scenario() -> None:
        async def receive() -> dict[str, object]:
            raise AssertionError("the watcher took a body message")

        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream = BodyStream(receive, gone)
        watcher = asyncio.ensure_future(stream.receive_after_body())
        await asyncio.sleep(0.01)
        assert not watcher.done()
        gone.set_result(None)
        assert await asyncio.wait_for(watcher, 5) == {"type": "http.disconnect"}

    asyncio.run(scenario())


def test_a_body_stream_on_a_closed_loop_says_the_client_is_gone() -> None:
    loop = asyncio.new_event_loop()

    async def make() -> BodyStream:
        return BodyStream(None, None)  # type: ignore[arg-type]

    stream = loop.run_until_complete(make())
    loop.close()
    with pytest.raises(ConnectionResetError, match="stopping"):
        stream.read(10, 1)
