"""The public app in-process: overload, headers from the guest, request ids."""

from __future__ import annotations

import anyio
import httpx
import pytest

from edgefn_platform.gateway._functions import LiveFunction
from edgefn_platform.gateway._logs import LogSink
from edgefn_platform.gateway.public import create_public_app
from edgefn_runtime import Limits, Sandbox


class OneFunction:
    """A FunctionTable stand-in serving one sandbox at /f."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.function = LiveFunction("f", 1, "/f", sandbox, Limits(timeout=5))

    def match(self, path: str) -> tuple[LiveFunction, str] | None:
        if path == "/f" or path.startswith("/f/"):
            return self.function, path[2:] or "/"
        return None


class NoLogs(LogSink):
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, list[str]]] = []

    def add(self, function: str, request_id: str, kind: str, lines: list[str]) -> None:
        self.lines.append((request_id, kind, lines))


def client(hostile: Sandbox, max_in_flight: int = 64) -> httpx.AsyncClient:
    app = create_public_app(OneFunction(hostile), NoLogs(), max_in_flight)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.anyio
async def test_beyond_capacity_is_503_overloaded_with_retry_after(hostile: Sandbox) -> None:
    async with client(hostile, max_in_flight=1) as http:
        responses: list[httpx.Response] = []

        async def call(path: str) -> None:
            responses.append(await http.get(path))

        async with anyio.create_task_group() as group:
            group.start_soon(call, "/f/sleep?seconds=1")
            await anyio.sleep(0.3)
            group.start_soon(call, "/f/counter")
    overloaded = [r for r in responses if r.status_code == 503]
    assert len(overloaded) == 1
    assert overloaded[0].json()["error"]["code"] == "overloaded"
    assert overloaded[0].headers["retry-after"] == "1"
    assert [r.status_code for r in responses if r is not overloaded[0]] == [200]


@pytest.mark.anyio
async def test_response_headers_keep_repeats_and_drop_hop_by_hop(hostile: Sandbox) -> None:
    async with client(hostile) as http:
        response = await http.get("/f/json", headers={"x-request-id": "given"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "given"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


@pytest.mark.anyio
async def test_header_injection_from_the_function_is_refused(hostile: Sandbox) -> None:
    async with client(hostile) as http:
        response = await http.get("/f/bad-header")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "function_crashed"
    assert "injected" not in response.headers


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
