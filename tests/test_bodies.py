"""The worker's body budget on its own: who gets in, who waits, who is refused."""

from __future__ import annotations

import asyncio

import pytest

from edgefn_platform.gateway._bodies import BodyBudget
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
