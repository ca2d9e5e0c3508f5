"""The public request path through a real gateway: what a client controls (the
request target, the Host header, platform headers, the request id, body sizes)
cannot reach past the gateway's rules."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import attacks
from gateway_process import ROOT, GatewayProcess, cli, serving
from uploads import storm, upload
from waiting import wait_until

FUNCTIONS = Path(__file__).resolve().parent / "functions"
AREA = "The public request path (tests/test_public_gateway.py)"
MIB = 2**20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("public") / "data").start()
    try:
        for directory in (ROOT / "functions" / "hello", FUNCTIONS / "hostile"):
            result = cli(process, "deploy", str(directory))
            assert result.exit_code == 0, result.output
        yield process
    finally:
        process.stop()


def exchange(gateway: GatewayProcess, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `head` as is on a new connection; the status, headers and body."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    top, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def get(gateway: GatewayProcess, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    lines = "".join(f"{h}\r\n" for h in (*headers, "Connection: close"))
    host = "" if any(h.lower().startswith("host:") for h in headers) else "Host: x\r\n"
    return exchange(gateway, f"GET {target} HTTP/1.1\r\n{host}{lines}\r\n".encode("latin-1"))


def code_of(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


# Platform headers


def test_client_platform_headers_never_reach_the_function(gateway: GatewayProcess) -> None:
    status, _, body = get(
        gateway, "/hostile/inspect", "X-Edgefn-Route: /other", "x-EDGEFN-foo: bar"
    )
    assert status == 200, body
    seen = json.loads(body)["headers"]
    platform = [[name, value] for name, value in seen if name.lower().startswith("x-edgefn-")]
    assert platform == [["x-edgefn-route", "/hostile"]], seen
    attacks.record(
        AREA,
        "client sends `X-Edgefn-Route: /other` and `x-EDGEFN-foo` (replay a route-bound "
        "signature on another route)",
        "dropped: the function sees one `x-edgefn-route`, the gateway's, and no `x-edgefn-foo`",
    )


# Routing on the raw path


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("encoded dot segments", "/hostile/%2e%2e/hello/"),
        ("mixed-case encoded dot segments", "/hostile/%2E./hello/"),
        ("raw dot segments climbing out of the route", "/hostile/x/../../hello/"),
        ("a `.` segment", "/hostile/./inspect"),
        ("`..` behind encoded slashes", "/hostile/x%2F..%2F..%2Fhello"),
        ("`..` behind backslashes", "/hostile/x\\..\\..\\hello"),
        ("an encoded slash in the route part", "/hostile%2Finspect"),
        ("an encoded slash at the end of the route part", "/hello%2f"),
        ("a percent-encoded letter in the route part", "/hell%6F/"),
    ],
)
def test_ambiguous_paths_are_refused_with_400_bad_path(
    gateway: GatewayProcess, kind: str, target: str
) -> None:
    status, _, body = get(gateway, target)
    assert (status, code_of(body)) == (400, "bad_path"), body
    attacks.record(AREA, f"{kind}: `{target}`", "400 `bad_path`: routed to no function")


def test_an_encoded_slash_below_the_route_reaches_the_function_decoded(
    gateway: GatewayProcess,
) -> None:
    status, _, body = get(gateway, "/hostile/inspect/https%3A%2F%2Fexample.com%2Fa.jpg")
    assert status == 200, body
    assert json.loads(body)["path"] == "/inspect/https://example.com/a.jpg"


def test_an_encoded_question_mark_stays_in_the_path(gateway: GatewayProcess) -> None:
    status, _, body = get(gateway, "/hostile/inspect/a%3Fx=1?y=2")
    assert status == 200, body
    seen = json.loads(body)
    assert (seen["path"], seen["query"]) == ("/inspect/a?x=1", {"y": ["2"]})
    attacks.record(
        AREA,
        "an encoded `?` in the path (`/hostile/inspect/a%3Fx=1?y=2`) to inject a query",
        "the function sees path `/inspect/a?x=1` and query `y=2`, from the raw request target",
    )


@pytest.mark.parametrize(
    ("host", "target", "expected"),
    [
        # Starlette's request.url, rebuilt from the Host header, made this /hostile/inspect.
        ("x/hostile/inspect?", "/nothing", 404),
        # ... and this /hello.
        ("x/hello?", "/hostile/inspect", 200),
        ("x#", "/hostile/inspect", 200),
    ],
)
def test_the_host_header_never_moves_the_route(
    gateway: GatewayProcess, host: str, target: str, expected: int
) -> None:
    status, _, body = get(gateway, target, f"Host: {host}")
    assert status == expected, body
    if expected == 200:
        assert json.loads(body)["path"] == "/inspect"  # hostile answered, on its own path
    else:
        assert code_of(body) == "no_route"
    attacks.record(
        AREA,
        f"`Host: {host}` with `GET {target}` (route by the Host header)",
        "routed on the request target alone: "
        + ("hostile's /inspect answers" if expected == 200 else "404 `no_route`"),
    )


# Request ids


@pytest.mark.parametrize(
    "given",
    ["abc-1", "0f8fad5b-d9cb-469f-a165-70867728950e", "node-7:42", "8a1b2c3d4e5f-LHR", "i" * 64],
)
def test_a_plain_short_request_id_is_kept(gateway: GatewayProcess, given: str) -> None:
    status, headers, _ = get(gateway, "/hello/", f"X-Request-Id: {given}")
    assert status == 200 and headers["x-request-id"] == given


@pytest.mark.parametrize(
    ("attack", "given"),
    [
        ("a 10 KB request id", "i" * 10_000),
        ("a 65-character request id", "i" * 65),
        ("a request id with spaces and quotes", 'a "b" c'),
        ("a request id with Latin-1 bytes", "caf\xe9"),
        ("a request id with a percent-encoded newline", "a%0Ab"),
        ("a request id with a forged log field", 'x","status":200'),
    ],
)
def test_an_unfit_request_id_is_replaced(gateway: GatewayProcess, attack: str, given: str) -> None:
    for target in ("/hello/", "/nothing"):  # a function's answer and the gateway's error
        _, headers, body = get(gateway, target, f"X-Request-Id: {given}")
        replaced = headers["x-request-id"]
        assert replaced != given and len(replaced) == 32 and int(replaced, 16) >= 0
    assert json.loads(body)["error"]["request_id"] == replaced
    attacks.record(
        AREA, attack, "replaced by a generated id (32 hex digits) in the response, logs and errors"
    )


# Request bodies


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with its default body budget, `hostile` taking 25 MiB bodies."""
    limits = ("--max-body", "25MiB", "--memory", "128MiB", "--concurrency", "2")
    with serving(
        GatewayProcess(tmp_path_factory.mktemp("uploads") / "data"),
        ROOT / "functions" / "hello",
        FUNCTIONS / "hostile",
        limits={"hostile": limits},
    ) as process:
        yield process


def test_100_concurrent_25_mib_uploads_stay_within_the_body_budget(
    uploads: GatewayProcess,
) -> None:
    assert uploads.process is not None
    # Warm the worker's allocator with one upload, so the figure is the storm's.
    assert upload(uploads.port, "/hostile/length", memoryview(b"x" * 25 * MIB)) == "200"
    result = storm(
        uploads.port, uploads.process.pid, "/hostile/length", uploads.public_url + "/hello/"
    )
    assert set(result.outcomes) <= {"200", "503 overloaded"}, result.summary()
    assert result.outcomes["200"] >= 2, result.summary()
    # The default budget (256 MiB of bodies) plus the two requests in their sandboxes
    # (each its body as stdin and in linear memory), and what the allocator keeps of
    # them; without the budget: +2.5 GB and more. 768 MiB until issue 20 lowered the
    # worker's idle RSS by ~50 MiB (243 -> 195 MiB before the storm) while its peak
    # stayed where it was (888-951 MiB at d58b454, 856-960 MiB at 3dd9048+, 3 runs
    # each), so the growth measured from it rose by as much: +574 to +809 MiB over
    # 19 runs since, which left 768 failing one clean-clone run in three.
    assert result.growth < 896 * MIB, result.summary()
    assert set(result.probe_statuses) == {200} and len(result.probe_seconds) >= 5
    assert max(result.probe_seconds) < 2, result.summary()
    attacks.record(
        AREA,
        "100 concurrent uploads of 25 MiB to one worker (function max_body 25 MiB, concurrency 2)",
        f"{result.outcomes['200']} × 200, {result.outcomes['503 overloaded']} × 503 `overloaded` "
        f"(+ Retry-After, connection closed before reading); worker RSS "
        f"+{result.growth / MIB:.0f} MiB at peak (body budget 256 MiB); `hello` answered "
        f"{len(result.probe_seconds)} probes, all 200, slowest "
        f"{max(result.probe_seconds) * 1000:.0f} ms",
    )


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Room for one 1 MiB body; a 2 s body timeout; requests may wait 5 s for room;
    `hostile` may run for 3 s."""
    env = {
        "EDGEFN_BACKPRESSURE_BODY_BUDGET": "1MiB",
        "EDGEFN_BACKPRESSURE_QUEUE_WAIT": "5s",
        "EDGEFN_BODY_TIMEOUT": "2",
    }
    with serving(
        GatewayProcess(tmp_path_factory.mktemp("budget") / "data", extra_env=env),
        FUNCTIONS / "hostile",
        limits={"hostile": ("--timeout", "3s")},
    ) as process:
        yield process


def test_waiting_for_the_body_budget_does_not_count_against_the_body_timeout(
    small_budget: GatewayProcess,
) -> None:
    """A slow upload holds the whole budget for about 3 s (1 s to send, 2 s in
    the function); a second request sends its body at once and waits for room
    longer than the 2 s body timeout."""
    size = MIB
    first: list[str] = []

    def slow() -> None:
        with socket.create_connection(("127.0.0.1", small_budget.port), timeout=10) as sock:
            sock.sendall(
                b"POST /hostile/sleep?seconds=2 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
            )
            for part in range(5):
                sock.sendall(b"x" * ((part + 1) * size // 5 - part * size // 5))
                time.sleep(0.2)  # a slow client's pace, not a wait for state
            first.append(sock.recv(65536).split(b" ", 2)[1].decode())

    thread = threading.Thread(target=slow)
    thread.start()
    try:

        def budget_held() -> bool:
            # A chunked body may not wait for room: refused at once while the
            # slow upload holds the budget, let in (and answered 200) otherwise.
            probe = httpx.post(small_budget.public_url + "/hostile/length", content=iter([b"x"]))
            return probe.status_code == 503

        wait_until(budget_held, timeout=5, message="the slow upload to hold the body budget")
        started = time.perf_counter()
        second = upload(small_budget.port, "/hostile/length", memoryview(b"x" * size))
        waited = time.perf_counter() - started
    finally:
        thread.join()
    assert first == ["200"]
    assert second == "200" and waited > 2, (second, waited)
    attacks.record(
        AREA,
        "a body sent at once while a slow upload holds the body budget (2 s body timeout)",
        f"200 after waiting {waited:.1f} s for room: the body clock starts when the gateway "
        "reads, so the gateway's own wait never turns into a 408",
    )
