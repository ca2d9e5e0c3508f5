"""`reuse`: one instance serves several requests in turn, each under its own limits."""

from __future__ import annotations

import gc
import json
import os
import weakref

import pytest

from edgefn_platform import BuildResult
from edgefn_runtime import (
    Engine,
    FuelExhausted,
    GuestError,
    Limits,
    MemoryLimitExceeded,
    Request,
    ResponseTooLarge,
    Sandbox,
    Timeout,
    _wasmtime,
)
from edgefn_runtime._handle_call import HandleParam
from edgefn_runtime._sandbox import SUCCESSOR_LEAD
from waiting import wait_until

LIMITS = Limits(timeout=1.0)


def counter(sandbox: Sandbox) -> int:
    outcome = sandbox.invoke(Request("GET", "/counter"), LIMITS)
    return int(json.loads(outcome.response.body)["counter"])


def test_an_instance_serves_up_to_reuse_requests_then_is_replaced(reused: Sandbox) -> None:
    # The isolation trade-off, made visible: globals survive within an instance.
    assert [counter(reused) for _ in range(7)] == [1, 2, 3, 4, 5, 1, 2]


def test_the_default_is_a_fresh_instance_per_request(hostile: Sandbox) -> None:
    assert [counter(hostile) for _ in range(3)] == [1, 1, 1]


def test_each_request_gets_its_own_body(reused: Sandbox) -> None:
    bodies = [b"first", b"", bytes(range(256)) * 12_000, b"\x00last\xff", b""]
    for body in bodies:
        outcome = reused.invoke(Request("POST", "/echo", body=body), LIMITS)
        assert outcome.response.body == body
    assert counter(reused) == 1  # all five came from one instance, now retired


def test_each_request_gets_its_own_head(reused: Sandbox) -> None:
    # The instance keeps its lowered parameter and replaces only what changed:
    # each field in turn changes, stays, and changes back.
    requests = [
        Request("GET", "/inspect", "a=1", [("x-one", "1")]),
        Request("POST", "/inspect", "a=1", [("x-one", "1")]),
        Request("POST", "/inspect/deeper", "a=1", [("x-one", "1")]),
        Request("POST", "/inspect/deeper", "", [("x-two", "2"), ("x-two", "3")]),
        Request("GET", "/inspect", "a=1", [("x-one", "1")]),
    ]
    seen = []
    for request in requests:
        answer = json.loads(reused.invoke(request, LIMITS).response.body)
        assert answer["method"] == request.method
        assert answer["path"] == request.path
        assert answer["query"] == ({"a": ["1"]} if request.query else {})
        assert [tuple(pair) for pair in answer["headers"]] == request.headers
        seen.append(answer)
    assert seen[0] == seen[4]
    assert counter(reused) == 1  # all five from one instance, now retired


def test_a_request_that_cannot_be_lowered_leaves_the_last_one_whole() -> None:
    # The parameter a reused instance keeps: a text that cannot be encoded (a lone
    # surrogate, e.g. from `edgefn invoke` on a non-UTF-8 command line) raises and
    # leaves every field as its record of what was lowered says (those before the
    # bad one already replaced), so the next request replaces what differs.
    param = HandleParam(body_in_file=False)

    def lowered() -> list[str]:
        return [_wasmtime.lift_string(param._fields[i].val) for i in range(4)]

    first = Request("GET", "/secret-path", "a=1", [("x-one", "1")])
    param.set(first)
    with pytest.raises(UnicodeEncodeError):
        param.set(Request("POST", "/a\udcff", "b=2", [("x-two", "2")]))
    assert lowered() == ["POST", "/secret-path", "a=1", "x-one: 1\n"]
    param.set(first)
    assert lowered() == ["GET", "/secret-path", "a=1", "x-one: 1\n"]


def test_each_request_gets_its_own_logs(reused: Sandbox) -> None:
    first = reused.invoke(Request("GET", "/print"), LIMITS)
    second = reused.invoke(Request("GET", "/print"), LIMITS)
    assert first.logs == second.logs
    assert sum("printed line" in line for line in second.logs) == 1


def test_log_cap_applies_per_request(reused: Sandbox) -> None:
    limits = Limits(timeout=1.0, max_log=4096)
    for _ in range(3):
        outcome = reused.invoke(Request("GET", "/log-flood", "lines=200"), limits)
        assert outcome.response.body == b"still alive\n"
        assert "log limit of 4096 bytes reached" in outcome.logs[-1]
        assert outcome.logs[0].startswith("flood line 000000")


def test_responses_larger_than_the_output_stretches_still_arrive_whole(reused: Sandbox) -> None:
    # Four stretches of 1 MiB: the instance is retired when the next would not fit.
    limits = Limits(timeout=1.0, max_response=1024 * 1024)
    size = 1000 * 1000
    for _ in range(9):
        outcome = reused.invoke(Request("GET", "/big", f"size={size}"), limits)
        assert outcome.response.body == b"x" * size
    with pytest.raises(ResponseTooLarge):
        reused.invoke(Request("GET", "/big", f"size={2 * size}"), limits)


@pytest.mark.parametrize(
    ("path", "limits", "error"),
    [
        ("/loop", Limits(fuel=50_000_000), FuelExhausted),
        ("/sleep", Limits(timeout=0.2), Timeout),
        ("/alloc", Limits(memory=48 * 1024 * 1024), MemoryLimitExceeded),
        ("/raise", LIMITS, GuestError),
    ],
)
def test_limits_hold_per_request_and_a_failed_instance_is_dropped(
    reused: Sandbox, path: str, limits: Limits, error: type[Exception]
) -> None:
    assert [counter(reused) for _ in range(2)] == [1, 2]
    with pytest.raises(error):
        reused.invoke(Request("GET", path), limits)
    assert counter(reused) == 1  # a new instance: the failed one was thrown away
    fuel = reused.invoke(Request("GET", "/counter"), LIMITS).usage.fuel
    assert 0 < fuel < 50_000_000  # fuel is counted per request, not per instance


def test_fuel_is_reset_for_every_request(reused: Sandbox) -> None:
    first = reused.invoke(Request("GET", "/counter"), LIMITS).usage.fuel
    # Each call fits the budget alone; four more of them together would not.
    limits = Limits(timeout=1.0, fuel=first * 2)
    for _ in range(4):
        outcome = reused.invoke(Request("GET", "/counter"), limits)
        assert 0 < outcome.usage.fuel < first
    assert counter(reused) == 1


def test_idle_instances_are_freed_on_close(reused: Sandbox) -> None:
    counter(reused)
    assert reused.idle == 1
    instance = weakref.ref(reused._idle[0])
    fds = len(os.listdir("/proc/self/fd"))
    gc.disable()  # freed by reference counting alone: no cycle keeps it alive
    try:
        reused.close()
        assert reused.idle == 0
        assert instance() is None  # the instance, and its store with it, are gone
    finally:
        gc.enable()
    assert len(os.listdir("/proc/self/fd")) < fds  # its stdio memfds closed
    assert counter(reused) == 1  # the next request gets a fresh instance


def test_idle_instances_are_capped_across_functions_and_freed_with_them(
    hostile_build: BuildResult,
) -> None:
    gc.disable()  # freed by reference counting alone: no cycle keeps them alive
    try:
        with Engine(max_instances=8) as small:  # room for 8 // 4 = 2 idle instances
            sandboxes = [small.load(hostile_build.path, reuse=5) for _ in range(3)]
            for sandbox in sandboxes:
                assert sandbox.invoke(Request("GET", "/counter"), LIMITS).response.status == 200
            assert [s.idle for s in sandboxes] == [1, 1, 0]
            del sandbox, sandboxes
            assert small.idle_instances() == 0
    finally:
        gc.enable()


def test_the_only_idle_instance_gets_its_successor_before_it_retires(
    engine: Engine, hostile_build: BuildResult
) -> None:
    # Else the requests that find no idle instance when it retires each make one
    # on a thread, several at once, waiting there (p99 272 ms instead of 48).
    sandbox = engine.load(hostile_build.path, reuse=SUCCESSOR_LEAD + 3)
    assert [counter(sandbox) for _ in range(3)] == [1, 2, 3]  # the 3rd: its successor is made
    wait_until(lambda: sandbox.idle == 2, message="the successor, instantiated on its own thread")
    assert [counter(sandbox) for _ in range(SUCCESSOR_LEAD)][-1] == SUCCESSOR_LEAD + 3  # retired
    assert sandbox.idle == 1
    taken_over = sandbox.invoke(Request("GET", "/counter"), LIMITS)
    assert json.loads(taken_over.response.body)["counter"] == 1  # the successor's globals
    assert taken_over.usage.instantiate_seconds == 0  # instantiated before it was asked
    assert taken_over.usage.fuel > 0


def test_an_instance_reused_for_few_requests_gets_no_successor(reused: Sandbox) -> None:
    assert [counter(reused) for _ in range(4)] == [1, 2, 3, 4]
    assert reused.idle == 1
