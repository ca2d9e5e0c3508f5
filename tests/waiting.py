"""Waiting on state, not on time: the one polling helper of the tests.

A fixed pause is either too short on a loaded machine (a flaky test) or
too long everywhere else (a slow suite); `wait_until` polls what the test can
observe (a metric, a log line, a file, a process) and returns as soon as it holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "until", "wait_until"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """What was awaited never came; an AssertionError, so pytest shows it as a failure."""


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    message: str | Callable[[], str],
) -> T:
    """Call `predicate` every `interval` seconds until it returns a truthy value,
    and return that value. After `timeout` seconds, raise WaitTimeout naming
    `message` (what was awaited; a callable is asked only then, so it may describe
    the state at that moment) and the last value seen.

    An exception from `predicate` propagates: wrap the call in the predicate when
    an error only means "not yet" (a connection refused while a server starts)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timeout(timeout, message, value)
        time.sleep(interval)


async def until(
    predicate: Callable[[], T | None], *, timeout: float = 5.0, message: str | Callable[[], str]
) -> T:
    """`wait_until` for a coroutine: yields to the event loop between checks, so
    the tasks that make `predicate` true get to run."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timeout(timeout, message, value)
        await asyncio.sleep(0)


def _timeout(timeout: float, message: str | Callable[[], str], value: object) -> WaitTimeout:
    awaited = message if isinstance(message, str) else message()
    return WaitTimeout(f"waited {timeout:g} s for {awaited}; last seen: {value!r}")
