"""The public app in-process: overload, headers from the guest, request ids."""

from __future__ import annotations

import gc
import json
import threading

import anyio
import httpx
import pytest
from starlette.responses import Response

from edgefn_platform import BuildResult
from edgefn_platform.gateway._functions import LiveFunction
from edgefn_platform.gateway._logs import LogSink
from edgefn_platform.gateway._metrics import Metrics
from edgefn_platform.gateway.policy import Policy
from edgefn_platform.gateway.public import PublicApp
from edgefn_runtime import Engine, Limits, Sandbox
from waiting import until


class OneFunction:
    """A FunctionTable stand-in serving one sandbox at /f."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.function = LiveFunction("f", 1, "/f", sandbox, Limits(timeout=5))
        self.ready = threading.Event()
        self.ready.set()

    def match(self, path: str) -> tuple[LiveFunction, str] | None:
        if path == "/f" or path.startswith("/f/"):
            return self.function, path[2:] or "/"
        return None


class NoLogs(LogSink):
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, list[str]]] = []

    def add(self, function: str, request_id: str, kind: str, lines: list[str]) -> None:
        self.lines.append((request_id, kind, lines))


def client(hostile: Sandbox, metrics: Metrics, **backpressure: float) -> httpx.AsyncClient:
    policy = Policy(**backpressure)  # type: ignore[arg-type]
    app = PublicApp(OneFunction(hostile), NoLogs(), policy, None, metrics)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class Counted:
    """`sandbox`, counting the calls that reached it."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox, self.calls = sandbox, 0

    def invoke(self, request: object, *args: object) -> object:
        self.calls += 1
        return self.sandbox.invoke(request, *args)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sandbox, name)


async def slow_then_fast(
    hostile: Sandbox, metrics: Metrics, **backpressure: float
) -> list[httpx.Response]:
    """A 1 s request, then a quick one while it runs; responses in arrival order."""
    responses: list[httpx.Response] = []
    counted = Counted(hostile)
    async with client(counted, metrics, **backpressure) as http:  # type: ignore[arg-type]

        async def call(path: str) -> None:
            responses.append(await http.get(path))

        async with anyio.create_task_group() as group:
            group.start_soon(call, "/f/sleep?seconds=1")
            await until(lambda: counted.calls, message="the slow request in its sandbox")
            group.start_soon(call, "/f/counter")
    return responses


@pytest.mark.anyio
async def test_beyond_capacity_is_503_overloaded_with_retry_after(
    hostile: Sandbox, metrics: Metrics
) -> None:
    responses = await slow_then_fast(hostile, metrics, global_concurrency=1, queue_length=0)
    overloaded = [r for r in responses if r.status_code == 503]
    assert len(overloaded) == 1
    assert overloaded[0].json()["error"]["code"] == "overloaded"
    assert overloaded[0].headers["retry-after"] == "1"
    assert [r.status_code for r in responses if r is not overloaded[0]] == [200]


@pytest.mark.anyio
async def test_response_headers_keep_repeats_and_drop_hop_by_hop(
    hostile: Sandbox, metrics: Metrics
) -> None:
    async with client(hostile, metrics) as http:
        response = await http.get("/f/hop-by-hop", headers={"x-request-id": "given"})
    assert response.status_code == 200 and response.text == "hops\n"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    hop_by_hop = {"connection", "keep-alive", "proxy-authenticate", "te", "trailer", "upgrade"}
    assert not hop_by_hop & set(response.headers), response.headers
    assert "transfer-encoding" not in response.headers
    # The gateway's own length, not the 999 the function claimed.
    assert response.headers.get_list("content-length") == [str(len(response.content))]
    assert response.headers["x-request-id"] == "given"


@pytest.mark.anyio
async def test_header_injection_from_the_function_is_refused(
    hostile: Sandbox, metrics: Metrics
) -> None:
    async with client(hostile, metrics) as http:
        response = await http.get("/f/bad-header")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "invalid_response"
    assert "injected" not in response.headers


@pytest.mark.anyio
async def test_a_short_queue_wait_turns_into_overloaded(hostile: Sandbox, metrics: Metrics) -> None:
    responses = await slow_then_fast(
        hostile, metrics, global_concurrency=1, queue_length=5, queue_wait=0.2
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503]
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded"


@pytest.mark.anyio
async def test_server_timing_splits_the_request(hostile: Sandbox, metrics: Metrics) -> None:
    async with client(hostile, metrics) as http:
        response = await http.get("/f/counter")
    cache, *timed = response.headers["server-timing"].split(", ")
    assert cache == "cache;desc=bypass"  # this app has no edge cache
    parts = dict(p.split(";dur=") for p in timed)
    assert set(parts) == {"queue", "instantiate", "execute"}
    # instantiate: the time the request waited for its instance, 0.00 if made ahead.
    assert float(parts["instantiate"]) >= 0 and float(parts["execute"]) > 0


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_unserved_methods_get_a_json_405_with_allow(
    hostile: Sandbox, metrics: Metrics
) -> None:
    async with client(hostile, metrics) as http:
        response = await http.request("TRACE", "/f/counter")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


@pytest.mark.anyio
async def test_a_gateway_bug_is_a_json_500_and_the_app_keeps_serving(
    hostile: Sandbox, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = OneFunction(hostile)
    app = PublicApp(table, NoLogs(), Policy(), None, metrics)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with monkeypatch.context() as patch:
            patch.setattr(table, "match", lambda path: 1 / 0)
            broken = await http.get("/f/counter")
        assert broken.status_code == 500
        assert broken.json()["error"]["code"] == "internal_error"
        assert (await http.get("/f/counter")).status_code == 200


async def _through_asgi(app: PublicApp, path: str, request_id: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get(path, headers={"x-request-id": request_id})


def _answer_now(app: PublicApp, path: str, request_id: str, query: bytes = b"") -> Response | None:
    """What the protocol asks first for a GET of `path` (`_http.py`)."""
    headers = [(b"host", b"test"), (b"x-request-id", request_id.encode())]
    return app.answer_now(path, path.encode(), query, headers)


@pytest.mark.anyio
async def test_a_get_answered_at_once_is_what_the_asgi_app_answers(
    reused: Sandbox, metrics: Metrics
) -> None:
    logs = NoLogs()
    app = PublicApp(OneFunction(reused), logs, Policy(), None, metrics)  # type: ignore[arg-type]
    asgi = await _through_asgi(app, "/f/json", "asgi")  # instantiates: a thread's work
    now = _answer_now(app, "/f/json", "now")  # the instance, idle: on this thread
    assert now is not None
    assert (now.status_code, now.body) == (asgi.status_code, asgi.content)
    assert sorted(now.headers.keys()) == sorted(asgi.headers.keys())
    assert (now.headers["x-request-id"], now.headers["x-edgefn-cache"]) == ("now", "BYPASS")
    timing = "cache;desc=bypass, queue;dur=0.00, instantiate;dur=0.00, execute;dur="
    assert now.headers["server-timing"].startswith(timing)
    kinds = [(rid, kind) for rid, kind, _ in logs.lines]
    assert kinds == [("asgi", "log"), ("asgi", "access"), ("now", "log"), ("now", "access")]
    (line,) = logs.lines[-1][2]
    assert '"request_id":"now"' in line and '"status":200' in line and '"outcome":"ok"' in line

    # A response the sandbox refuses, on this thread, is the request's own outcome.
    refused = _answer_now(app, "/f/bad-header", "refused-now")
    assert refused is not None
    asgi_refused = await _through_asgi(app, "/f/bad-header", "refused-asgi")
    assert refused.status_code == asgi_refused.status_code >= 500
    now_error = json.loads(refused.body)["error"]
    assert now_error["code"] == asgi_refused.json()["error"]["code"]
    assert now_error["request_id"] == "refused-now"


@pytest.mark.anyio
async def test_what_cannot_be_answered_at_once_is_left_to_the_asgi_app(
    hostile: Sandbox, reused: Sandbox, metrics: Metrics
) -> None:
    fresh = PublicApp(OneFunction(hostile), NoLogs(), Policy(), None, metrics)  # type: ignore[arg-type]
    assert _answer_now(fresh, "/f/json", "fresh") is None  # instantiating takes milliseconds
    logs = NoLogs()
    app = PublicApp(OneFunction(reused), logs, Policy(), None, metrics)  # type: ignore[arg-type]
    await _through_asgi(app, "/f/json", "warm")
    assert _answer_now(app, "/elsewhere", "no-function") is None  # its 404 is the app's
    assert _answer_now(app, "/f/%2e%2e/x", "bad-path") is None  # so is its 400
    with_body = [(b"host", b"test"), (b"content-length", b"2")]
    assert app.answer_now("/f/json", b"/f/json", b"", with_body) is None
    # A wait in the host is stopped before it waits: the request runs on a thread.
    assert _answer_now(app, "/f/host-sleep", "host-call", b"seconds=0.001") is None
    assert not any(line[0] in {"no-function", "bad-path", "host-call"} for line in logs.lines)


@pytest.mark.anyio
async def test_an_answer_at_once_leaves_nothing_for_the_cyclic_collector(
    engine: Engine, hostile_build: BuildResult, metrics: Metrics
) -> None:
    # As the ASGI path (test_http_protocol.py): a cycle per request waits for the
    # collector, whose pauses set the tail.
    reused = engine.load(hostile_build.path, reuse=1000)
    app = PublicApp(OneFunction(reused), NoLogs(), Policy(), None, metrics)  # type: ignore[arg-type]
    await _through_asgi(app, "/f/json", "warm")
    for _ in range(20):
        assert _answer_now(app, "/f/json", "warm") is not None
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            assert _answer_now(app, "/f/json", "counted") is not None
        left_for_the_collector = gc.collect()
    finally:
        gc.enable()
    assert left_for_the_collector < 200, f"{left_for_the_collector} objects in cycles"


@pytest.mark.anyio
async def test_a_204_or_304_goes_without_the_body_the_function_gave_it(
    reused: Sandbox, metrics: Metrics
) -> None:
    # Bytes after a response without a length would be read as the next response.
    app = PublicApp(OneFunction(reused), NoLogs(), Policy(), None, metrics)  # type: ignore[arg-type]
    for code in (204, 304):
        asgi = await _through_asgi(app, f"/f/status?code={code}", "asgi")
        now = _answer_now(app, "/f/status", "now", f"code={code}".encode())
        assert now is not None and (now.status_code, now.body) == (code, b"")
        assert "content-length" not in now.headers
        assert (asgi.status_code, asgi.content) == (code, b"")


def test_a_gateway_bug_answering_at_once_is_a_json_500(
    reused: Sandbox, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a parser error: the protocol would answer a client's 400 and log no bug.
    table = OneFunction(reused)
    app = PublicApp(table, NoLogs(), Policy(), None, metrics)  # type: ignore[arg-type]
    monkeypatch.setattr(table, "match", lambda path: 1 / 0)
    broken = _answer_now(app, "/f/json", "bug")
    assert broken is not None and broken.status_code == 500
    assert json.loads(broken.body)["error"]["code"] == "internal_error"
    assert broken.headers["x-request-id"] == "bug"
