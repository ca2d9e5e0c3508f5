"""Real components in the real sandbox: round trips, limits, isolation."""

from __future__ import annotations

import gc
import json
import os
import socket
import time

import pytest
from cycles import cyclic_garbage

from edgefn_runtime import (
    BodyTooLarge,
    FuelExhausted,
    GuestCrashed,
    GuestError,
    Limits,
    MemoryLimitExceeded,
    Request,
    ResponseTooLarge,
    Sandbox,
    Timeout,
)
from gateway_process import rss

LIMITS = Limits(timeout=1.0)


def call(sandbox: Sandbox, path: str, query: str = "", limits: Limits = LIMITS, **kw: object):
    return sandbox.invoke(Request("GET", path, query, **kw), limits)  # type: ignore[arg-type]


def assert_healthy(sandbox: Sandbox) -> None:
    outcome = call(sandbox, "/counter")
    assert outcome.response.status == 200
    assert json.loads(outcome.response.body) == {"counter": 1}


def test_hello_example(hello: Sandbox) -> None:
    outcome = hello.invoke(Request("GET", "/hello/world", "greeting=Hey"))
    assert outcome.response.status == 200
    assert outcome.response.body == b"Hey, world!\n"
    assert ("content-type", "text/plain; charset=utf-8") in outcome.response.headers


def test_round_trip_of_method_path_query_and_headers(hostile: Sandbox) -> None:
    headers = [("X-One", "1"), ("x-two", "zwei"), ("X-One", "again")]
    request = Request("PUT", "/inspect", "a=1&a=2&b=%C3%A9&empty=", headers)
    seen = json.loads(hostile.invoke(request, LIMITS).response.body)
    assert seen == {
        "method": "PUT",
        "path": "/inspect",
        "query": {"a": ["1", "2"], "b": ["é"], "empty": [""]},
        "headers": [list(h) for h in headers],
    }


def test_ten_megabyte_body_is_echoed_byte_exact(hostile: Sandbox) -> None:
    body = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    outcome = hostile.invoke(Request("POST", "/echo", body=body), LIMITS)
    assert outcome.response.status == 200
    assert len(outcome.response.body) == len(body)
    assert outcome.response.body == body


def test_an_instance_with_a_large_body_is_freed_by_its_request_not_queued(
    hostile: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgefn_runtime._sandbox as sandbox_module

    queued: list[object] = []
    monkeypatch.setattr(sandbox_module, "retire", queued.append)
    small = b"x" * sandbox_module.RETIRE_MAX_BODY
    for body in (small, small + b"x", b""):
        hostile.invoke(Request("POST", "/echo", body=body), Limits(timeout=1.0))
    assert len(queued) == 2  # the one over the bound was not


def test_body_over_the_limit_is_refused_before_running(hostile: Sandbox) -> None:
    with pytest.raises(BodyTooLarge, match="exceeds the limit of 1024"):
        hostile.invoke(Request("POST", "/echo", body=b"x" * 1025), Limits(max_body=1024))


def test_an_infinite_loop_stops_within_half_a_second_of_its_timeout(hostile: Sandbox) -> None:
    limits = Limits(timeout=0.5, fuel=10**15)
    started = time.monotonic()
    with pytest.raises(Timeout) as caught:
        call(hostile, "/loop", limits=limits)
    assert time.monotonic() - started < 0.5 + 0.5
    assert caught.value.code == "timeout"
    assert_healthy(hostile)


def test_sleeping_past_the_timeout_times_out_on_time(hostile: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout):
        call(hostile, "/sleep", "seconds=10", limits=Limits(timeout=0.5))
    assert time.monotonic() - started < 0.5 + 0.5
    assert_healthy(hostile)


def test_cpu_burn_exhausts_fuel(hostile: Sandbox) -> None:
    with pytest.raises(FuelExhausted) as caught:
        call(hostile, "/loop", limits=Limits(fuel=50_000_000, timeout=10))
    assert caught.value.usage.fuel == 50_000_000
    assert_healthy(hostile)


def test_growing_allocation_hits_the_memory_limit(hostile: Sandbox) -> None:
    with pytest.raises(MemoryLimitExceeded, match="64 MiB") as caught:
        call(hostile, "/alloc", limits=Limits(memory=64 * 1024 * 1024, timeout=5))
    assert caught.value.code == "memory_limit"
    assert_healthy(hostile)


def test_deep_recursion_is_a_guest_error(hostile: Sandbox) -> None:
    with pytest.raises(GuestError) as caught:
        call(hostile, "/recurse")
    assert caught.value.kind == "RecursionError"
    assert any("RecursionError" in line for line in caught.value.logs)
    assert_healthy(hostile)


def test_stack_overflow_is_a_crash(hostile: Sandbox) -> None:
    with pytest.raises(GuestCrashed, match="the function crashed") as caught:
        call(hostile, "/crash", limits=Limits(timeout=10))
    assert caught.value.code == "function_crashed"
    assert_healthy(hostile)


def test_raised_exception_carries_type_and_message(hostile: Sandbox) -> None:
    with pytest.raises(GuestError) as caught:
        call(hostile, "/raise")
    assert caught.value.kind == "KeyError"
    assert str(caught.value) == "KeyError: 'no such thing'"
    assert "/work" not in str(caught.value) and "/tmp" not in str(caught.value)
    assert_healthy(hostile)


def test_sys_exit_is_a_guest_error_not_a_crash(hostile: Sandbox) -> None:
    with pytest.raises(GuestError) as caught:
        call(hostile, "/exit")
    assert caught.value.kind == "SystemExit"
    assert_healthy(hostile)


def test_os_exit_is_a_guest_error_too(hostile: Sandbox) -> None:
    with pytest.raises(GuestError, match="exited") as caught:
        call(hostile, "/exit-hard")
    assert caught.value.kind == "SystemExit"
    assert_healthy(hostile)


def test_trapped_instances_are_freed_at_once_not_by_the_cyclic_gc(hostile: Sandbox) -> None:
    # A trap's traceback once held its instance's store in a reference cycle, so
    # each trapped instance kept its memory until a full collection: 200 of them
    # grew RSS by over 1 GB here (now: tens of MB, pool slots warming up).
    for _ in range(50):  # let the pool and the reaper reach their steady state
        with pytest.raises(GuestError):
            call(hostile, "/exit-hard")
    gc.disable()
    try:
        before = rss(os.getpid())
        for _ in range(200):
            with pytest.raises(GuestError):
                call(hostile, "/exit-hard")
        grown = rss(os.getpid()) - before
    finally:
        gc.enable()
    assert grown < 200 * 2**20, f"grew by {grown / 2**20:.0f} MB"


@pytest.mark.parametrize("path", ["/json", "/stream"])
def test_a_request_s_context_is_freed_at_once_not_by_the_cyclic_gc(
    hostile: Sandbox, path: str
) -> None:
    # The context holds the request's body: in a cycle (a capability's state
    # referring back to it), 100 uploads of 25 MiB at once held +1.1 GB instead
    # of +0.7 GB, until a collection. (wasmtime-py leaves small ctypes cycles.)
    call(hostile, path)
    with cyclic_garbage() as cyclic:
        for _ in range(20):
            call(hostile, path)
    assert not cyclic & {"RequestContext", "Instance", "Store"}, cyclic


def test_hundred_megabytes_of_output_is_response_too_large(hostile: Sandbox) -> None:
    with pytest.raises(ResponseTooLarge, match="exceeds the limit of 10485760 bytes"):
        call(hostile, "/big", "size=100000000", limits=Limits(timeout=10))
    assert_healthy(hostile)


def test_response_at_exactly_the_limit_is_delivered(hostile: Sandbox) -> None:
    outcome = call(hostile, "/big", "size=4096", limits=Limits(max_response=4096))
    assert outcome.response.body == b"x" * 4096


def test_global_state_does_not_survive_between_requests(hostile: Sandbox) -> None:
    counters = [json.loads(call(hostile, "/counter").response.body)["counter"] for _ in range(20)]
    assert counters == [1] * 20


def test_print_and_logging_go_to_logs_not_the_body(hostile: Sandbox) -> None:
    outcome = call(hostile, "/print")
    assert outcome.response.body == b"body only\n"
    assert outcome.logs == ["printed line", "WARNING hostile: logged line"]


def test_log_flood_is_capped_and_the_function_keeps_running(hostile: Sandbox) -> None:
    outcome = call(hostile, "/log-flood", "lines=5000", limits=Limits(max_log=4096))
    assert outcome.response.body == b"still alive\n"
    assert len("\n".join(outcome.logs[:-1])) <= 4096
    assert "log limit of 4096 bytes reached" in outcome.logs[-1]


def test_only_declared_environment_variables_are_visible(hostile: Sandbox) -> None:
    assert json.loads(call(hostile, "/env").response.body) == {"DECLARED": "visible"}


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", __file__])
def test_host_files_are_not_readable(hostile: Sandbox, path: str) -> None:
    result = json.loads(call(hostile, "/read", f"path={path}").response.body)
    assert "read" not in result
    assert result["error"].startswith("FileNotFoundError")


def test_assets_are_readable_but_not_writable(hostile: Sandbox) -> None:
    read = json.loads(call(hostile, "/read", "path=/assets/greeting.txt").response.body)
    assert read == {"read": "hello from an asset\n"}
    listed = json.loads(call(hostile, "/listdir", "path=/assets").response.body)
    assert listed == {"entries": ["greeting.txt"]}
    written = json.loads(call(hostile, "/write", "path=/assets/greeting.txt").response.body)
    assert "written" not in written
    escaped = json.loads(call(hostile, "/read", "path=/assets/../../etc/passwd").response.body)
    assert "read" not in escaped


def test_root_directory_cannot_be_listed(hostile: Sandbox) -> None:
    result = json.loads(call(hostile, "/listdir", "path=/").response.body)
    assert "entries" not in result


def test_sockets_cannot_be_opened(hostile: Sandbox) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = json.loads(call(hostile, "/socket", f"port={port}").response.body)
    assert "connected" not in result
    assert "PermissionError" in result["error"]


def test_usage_reports_fuel_and_timings(hostile: Sandbox) -> None:
    usage = call(hostile, "/counter").usage
    assert 0 < usage.fuel < LIMITS.fuel
    assert 0 <= usage.instantiate_seconds < 1  # 0: the instance was made ahead
    assert 0 < usage.execute_seconds < 1
    assert not hasattr(usage, "peak_memory")  # never measured, so not reported
