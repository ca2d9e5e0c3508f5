"""The outbound capability's host code, in-process against loopback origins.

Here the host's connect step is watched: every refusal of a blocked address
must happen before a connection is attempted, and no test ever connects
anywhere but loopback (the `connections` fixture fails the test otherwise).
End to end through a gateway and a built function: tests/test_outbound_gateway.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from origin_server import OriginServer

from edgefn_runtime import FuelExhausted, Limits, Request, Timeout, Usage
from edgefn_runtime.capabilities import RequestContext
from edgefn_runtime.capabilities._base import CountedFuel
from edgefn_runtime.capabilities.outbound import (
    AllowedHosts,
    OutboundCapability,
    OutboundFailure,
    OutboundPolicy,
    Outgoing,
)

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address this process connects a socket to; a connect anywhere but
    loopback (127.0.0.1, or ::1 where `localhost` has it) fails the test before it is made."""
    made: list[tuple[str, int]] = []
    connect = socket.socket.connect

    def watched(sock: socket.socket, address: Any) -> None:
        made.append(address[:2])
        assert address[0] in ("127.0.0.1", "::1"), f"a socket connected to {address}"
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", watched)
    return made


class Run:
    """One request's outbound capability, as the sandbox drives it."""

    def __init__(
        self,
        allowed: list[str],
        policy: OutboundPolicy | None = None,
        timeout: float = 5.0,
        headers: list[tuple[str, str]] | None = None,
        fuel: int = 10**9,
    ) -> None:
        self.capability = OutboundCapability(policy or OutboundPolicy(allowed_networks=LOOPBACK))
        self.context = RequestContext(None, {"outbound": AllowedHosts.parse(allowed)})
        request = Request("GET", headers=headers or [])
        self.context.begin(request, Limits(timeout=timeout, fuel=fuel), [self.capability])
        self.fuel = CountedFuel(fuel)

    def fetch(self, url: str, **kwargs: Any) -> Any:
        outgoing = Outgoing(kwargs.pop("method", "GET"), url, **kwargs)
        return self.capability.fetch(self.context, self.fuel, outgoing)

    def refused(self, url: str, kind: str, **kwargs: Any) -> OutboundFailure:
        with pytest.raises(OutboundFailure) as caught:
            self.fetch(url, **kwargs)
        assert caught.value.kind == kind, caught.value.message
        return caught.value

    def usage(self) -> Usage:
        usage = Usage()
        self.capability.finish(self.context.states["outbound"], usage)
        return usage


def test_a_declared_origin_answers_with_status_headers_and_body(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base])
    fetched = run.fetch(origin.url("/echo?x=1"), method="POST", body=b"hi", headers=[("X-A", "b")])
    answer = json.loads(fetched.body)
    assert fetched.status == 200 and fetched.url == origin.url("/echo?x=1")
    assert answer["method"] == "POST" and answer["body"] == "hi" and answer["query"] == {"x": "1"}
    assert (
        answer["headers"]["x-a"] == "b" and answer["headers"]["host"] == f"127.0.0.1:{origin.port}"
    )
    assert ("content-type", "application/json") in [(k.lower(), v) for k, v in fetched.headers]
    usage = run.usage()
    assert usage.fetches == 1 and usage.fetch_bytes == len(fetched.body)
    assert usage.fetch_outcomes == {"2xx": 1} and usage.fetch_seconds > 0


def test_connections_are_kept_alive_across_requests_of_a_worker(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    capability = OutboundCapability(OutboundPolicy(allowed_networks=LOOPBACK))
    for _ in range(3):
        run = Run([origin.base])
        run.capability = capability
        run.context.begin(Request("GET"), Limits(), [capability])
        assert run.fetch(origin.url("/big?bytes=10")).body == b"x" * 10
    assert len(connections) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://0.0.0.0/",
    ],
)
def test_blocked_networks_are_refused_before_any_connection(
    url: str, connections: list[tuple[str, int]]
) -> None:
    run = Run([url.rsplit("/", maxsplit=1)[0].rsplit("/latest", 1)[0]], OutboundPolicy())
    failure = run.refused(url, "not_allowed")
    assert "blocked network" in failure.message and "allowed_networks" in failure.message
    assert connections == []
    assert run.usage().fetch_outcomes == {"not_allowed": 1}


def test_a_name_resolving_to_loopback_is_refused_unless_exempted(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    local = f"http://localhost:{origin.port}"
    Run([local], OutboundPolicy()).refused(local + "/echo", "not_allowed")
    assert connections == [] and origin.hits("/echo") == 0
    policy = OutboundPolicy(allowed_networks=(*LOOPBACK, ipaddress.ip_network("::1/128")))
    assert Run([local], policy).fetch(local + "/echo").status == 200


def test_dns_is_resolved_once_and_the_checked_address_is_used(
    origin: OriginServer, connections: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding name: loopback (exempted) when checked, metadata afterwards.
    answers = iter(["127.0.0.1", "169.254.169.254", "169.254.169.254"])
    looked_up: list[str] = []

    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        looked_up.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    base = f"http://rebind.example:{origin.port}"
    answer = json.loads(Run([base]).fetch(base + "/echo").body)
    assert looked_up == ["rebind.example"]
    assert connections == [("127.0.0.1", origin.port)]
    assert answer["headers"]["host"] == f"rebind.example:{origin.port}"


def test_proxy_variables_are_ignored(
    origin: OriginServer, connections: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens on the discard port
    assert Run([origin.base]).fetch(origin.url("/echo")).status == 200
    assert connections == [("127.0.0.1", origin.port)]


def test_undeclared_hosts_are_refused_with_how_to_allow_them(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    failure = Run([]).refused(origin.url("/echo"), "not_allowed")
    assert "allowed_outbound_hosts" in failure.message
    failure = Run(["https://images.example.com"]).refused(origin.url("/echo"), "not_allowed")
    assert "allowed_outbound_hosts" in failure.message
    assert connections == [] and origin.hits("/echo") == 0


def test_redirects_are_followed_and_each_hop_is_checked(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base, "http://169.254.169.254"])
    fetched = run.fetch(origin.url("/chain/3"))
    assert (fetched.status, fetched.body, fetched.url) == (
        200,
        b"chain end",
        origin.url("/chain/0"),
    )
    assert run.usage().fetch_outcomes == {"3xx": 3, "2xx": 1}
    failure = run.refused(origin.url("/chain/6"), "failed")
    assert "more than 5 redirects" in failure.message
    # Declared in the manifest, but the operator blocks the network.
    failure = run.refused(origin.url("/redirect?to=http://169.254.169.254/"), "not_allowed")
    assert "redirected to http://169.254.169.254/" in failure.message
    failure = run.refused(origin.url("/redirect?to=https://undeclared.example/"), "not_allowed")
    assert "redirected to" in failure.message and "allowed_outbound_hosts" in failure.message
    assert {address for address, _ in connections} == {"127.0.0.1"}


def test_a_redirect_to_loopback_outside_the_exempted_range_is_refused(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    with OriginServer("127.0.0.2") as other:
        run = Run([origin.base, other.base])
        failure = run.refused(origin.url(f"/redirect?to={other.url('/echo')}"), "not_allowed")
        assert "127.0.0.2" in failure.message and "blocked network" in failure.message
        assert other.hits("/echo") == 0


def test_credentials_do_not_follow_a_redirect_to_another_origin(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    local = f"http://localhost:{origin.port}"
    run = Run([origin.base, local])
    headers = [("Authorization", "Bearer s3cret"), ("Cookie", "a=b"), ("X-Keep", "1")]
    same = json.loads(run.fetch(origin.url("/redirect?to=/echo"), headers=headers).body)
    assert same["headers"]["authorization"] == "Bearer s3cret"
    other = json.loads(run.fetch(origin.url(f"/redirect?to={local}/echo"), headers=headers).body)
    assert "authorization" not in other["headers"] and "cookie" not in other["headers"]
    assert other["headers"]["x-keep"] == "1"


def test_a_303_turns_a_post_into_a_get_without_its_body(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base])
    url = origin.url("/redirect?to=/echo&status=303")
    answer = json.loads(run.fetch(url, method="POST", body=b"data").body)
    assert answer["method"] == "GET" and answer["body"] == ""
    url = origin.url("/redirect?to=/echo&status=307")
    answer = json.loads(run.fetch(url, method="POST", body=b"data").body)
    assert answer["method"] == "POST" and answer["body"] == "data"


def test_an_endless_body_announced_as_10_gb_is_refused_before_reading(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    started = time.monotonic()
    failure = Run([origin.base]).refused(origin.url("/huge"), "too_large")
    assert "10,737,418,240" in failure.message and "max_response_bytes" in failure.message
    assert time.monotonic() - started < 1


def test_response_bytes_are_capped_per_fetch_and_per_request(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    policy = OutboundPolicy(
        allowed_networks=LOOPBACK, max_response_bytes=1000, max_total_bytes=1500
    )
    run = Run([origin.base], policy)
    failure = run.refused(origin.url("/big?bytes=1001"), "too_large")
    assert "max_response_bytes" in failure.message
    assert len(run.fetch(origin.url("/big?bytes=1000")).body) == 1000
    failure = run.refused(origin.url("/big?bytes=600"), "too_large")
    assert "max_total_bytes" in failure.message
    assert run.usage().fetch_bytes == 1000


def test_fetches_per_request_are_capped(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base], OutboundPolicy(allowed_networks=LOOPBACK, max_fetches=2))
    for _ in range(2):
        run.fetch(origin.url("/big?bytes=1"))
    failure = run.refused(origin.url("/big?bytes=1"), "not_allowed")
    assert "max_fetches" in failure.message
    assert origin.hits("/big") >= 2


def test_request_bodies_are_capped(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base], OutboundPolicy(allowed_networks=LOOPBACK, max_body_bytes=10))
    failure = run.refused(origin.url("/echo"), "too_large", method="POST", body=b"x" * 11)
    assert "max_body_bytes" in failure.message


def test_a_fetch_timeout_is_the_functions_to_handle(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base])
    for path in ("/stall?delay=3", "/drip?bytes=50&interval=0.1"):
        started = time.monotonic()
        run.refused(origin.url(path), "timeout", timeout=0.5)
        assert 0.4 < time.monotonic() - started < 1.0
    assert run.context.breach is None  # the request goes on: the function may answer


def test_a_fetch_never_outlives_the_request_deadline(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    # A byte every 0.2 s never lets a read time out; the request's deadline ends it.
    run = Run([origin.base], timeout=1.0)
    started = time.monotonic()
    run.refused(origin.url("/drip?bytes=100&interval=0.2"), "timeout")
    assert time.monotonic() - started < 1.0 + 0.5
    assert isinstance(run.context.breach, Timeout)
    assert run.fuel.left() == 0  # the guest is stopped


def test_a_fetch_without_fuel_stops_the_request(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base], fuel=1000)
    run.refused(origin.url("/echo"), "timeout")
    assert isinstance(run.context.breach, FuelExhausted) and origin.hits("/echo") == 0


def test_the_gateways_warm_up_request_reaches_no_origin(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base], headers=[("X-Edgefn-Warmup", "1")])
    assert "warm-up" in run.refused(origin.url("/echo"), "not_allowed").message
    assert connections == [] and origin.hits("/echo") == 0


def test_invalid_methods_and_headers_are_refused(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base])
    run.refused(origin.url("/echo"), "not_allowed", method="CONNECT")
    run.refused(origin.url("/echo"), "not_allowed", headers=[("X-A", "b\r\nX-Forged: 1")])
    run.refused(origin.url("/echo"), "not_allowed", headers=[("Bad Name", "v")])
    assert connections == []


def test_hop_by_hop_and_host_headers_are_the_hosts(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    headers = [("Host", "evil.example"), ("Connection", "upgrade"), ("Upgrade", "websocket")]
    answer = json.loads(Run([origin.base]).fetch(origin.url("/echo"), headers=headers).body)
    assert answer["headers"]["host"] == f"127.0.0.1:{origin.port}"
    assert "upgrade" not in answer["headers"]
    assert answer["headers"]["user-agent"] == "edgefn"


def test_the_incoming_trace_context_is_propagated_as_a_child_span(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    parent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    run = Run([origin.base], headers=[("traceparent", parent), ("tracestate", "v=1")])
    first = json.loads(run.fetch(origin.url("/echo")).body)["headers"]
    second = json.loads(run.fetch(origin.url("/echo")).body)["headers"]
    for headers in (first, second):
        version, trace_id, span_id, flags = headers["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert span_id not in ("b7ad6b7169203331", "0" * 16)
        assert headers["tracestate"] == "v=1"
    assert first["traceparent"] != second["traceparent"]  # a new span each
    # The function's own traceparent wins; none is made up without an incoming one.
    mine = f"00-{'1' * 32}-{'2' * 16}-00"
    echoed = json.loads(run.fetch(origin.url("/echo"), headers=[("traceparent", mine)]).body)
    assert echoed["headers"]["traceparent"] == mine
    plain = json.loads(Run([origin.base]).fetch(origin.url("/echo")).body)["headers"]
    assert "traceparent" not in plain
    invalid = Run([origin.base], headers=[("traceparent", f"00-{'0' * 32}-{'1' * 16}-01")])
    assert "traceparent" not in json.loads(invalid.fetch(origin.url("/echo")).body)["headers"]


class RawOrigin:
    """A loopback server that answers every connection with `script(sock)`: for
    answers no HTTP server library would send (heads dripping, endless chunks)."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> RawOrigin:
        self.threads.append(threading.Thread(target=self._accept))
        self.threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(sock,))
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.recv(65536)
            with contextlib.suppress(OSError):
                self.script(sock, self.stopping)


def drip(prefix: bytes, endless: bytes) -> Any:
    def script(sock: socket.socket, stopping: threading.Event) -> None:
        sock.sendall(prefix)
        while not stopping.wait(0.1):
            sock.sendall(endless)

    return script


@pytest.mark.parametrize(
    ("case", "script"),
    [
        ("a head dripping a byte at a time", drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a")),
        (
            "a chunk-size line without end",
            drip(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"0"),
        ),
        (
            "a trailer without end",
            drip(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ", b"t"),
        ),
        ("100 Continue forever", drip(b"", b"HTTP/1.1 100 Continue\r\n\r\n")),
    ],
)
def test_no_answer_holds_a_fetch_past_the_request_deadline(case: str, script: Any) -> None:
    with RawOrigin(script) as origin:
        run = Run([origin.base], timeout=1.0)
        started = time.monotonic()
        run.refused(origin.base + "/", "timeout")
        assert time.monotonic() - started < 1.0 + 0.5, case
        assert isinstance(run.context.breach, Timeout), case


def test_a_redirects_body_is_never_waited_for() -> None:
    answer = b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 1000\r\n\r\n"
    with RawOrigin(drip(answer, b"r")) as origin:
        run = Run([origin.base], timeout=5.0)
        started = time.monotonic()
        assert "more than 5 redirects" in run.refused(origin.base + "/", "failed").message
        assert time.monotonic() - started < 1.0


def test_an_invalid_status_or_location_is_a_failure_not_a_crash() -> None:
    with RawOrigin(drip(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", b"")) as origin:
        assert "invalid status 999" in Run([origin.base]).refused(origin.base, "failed").message
    answer = b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n"
    with RawOrigin(drip(answer, b"")) as origin:
        failure = Run([origin.base]).refused(origin.base, "failed")
        assert "invalid Location" in failure.message


def test_messages_never_repeat_a_query_or_credentials(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    refused = Run([f"http://127.0.0.1:{port}"]).refused(
        f"http://127.0.0.1:{port}/p?secret=s3cr3t", "failed"
    )
    location = "http://user:pw@evil.example/?tok=t0ken"
    escaped = Run([origin.base]).refused(
        origin.url(f"/redirect?to={quote(location)}&key=k3y"), "not_allowed"
    )
    for message in (refused.message, escaped.message):
        assert not {"s3cr3t", "pw", "t0ken", "k3y"} & set(re.split(r"[^\w]+", message)), message


def test_a_head_of_a_large_resource_is_not_too_large(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    run = Run([origin.base], OutboundPolicy(allowed_networks=LOOPBACK, max_response_bytes=1000))
    fetched = run.fetch(origin.url("/big?bytes=50000"), method="HEAD")
    assert (fetched.status, fetched.body) == (200, b"")


def test_header_values_that_http_cannot_carry_are_refused(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    failure = Run([origin.base]).refused(origin.url("/echo"), "not_allowed", headers=[("X-A", "Ā")])
    assert "invalid request header" in failure.message and connections == []


def test_bytes_refused_part_way_count_against_the_request(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    # Chunked: no length announced, so only reading finds the body too large.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    policy = OutboundPolicy(allowed_networks=LOOPBACK, max_response_bytes=3, max_total_bytes=5)
    with RawOrigin(drip(chunked, b"")) as raw:
        run = Run([origin.base, raw.base], policy)
        run.refused(raw.base + "/", "too_large")
    assert run.usage().fetch_bytes == 4
    assert "max_total_bytes" in run.refused(origin.url("/big?bytes=2"), "too_large").message


def test_fetches_carry_the_cdn_loop_the_gateway_counts(
    origin: OriginServer, connections: list[tuple[str, int]]
) -> None:
    first = json.loads(Run([origin.base]).fetch(origin.url("/echo")).body)["headers"]
    assert first["cdn-loop"] == "edgefn"
    # Extended from the incoming request's, whatever the function sends itself.
    run = Run([origin.base], headers=[("CDN-Loop", "cdn.example, edgefn")])
    forged = [("CDN-Loop", "nothing")]
    echoed = json.loads(run.fetch(origin.url("/echo"), headers=forged).body)["headers"]
    assert echoed["cdn-loop"] == "cdn.example, edgefn, edgefn"


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS origin on 127.0.0.1 whose certificate (for `localhost`) a test CA
    signed: the URL to fetch and the CA's PEM file."""
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    with OriginServer(tls=context) as server:
        yield f"https://localhost:{server.port}", ca_file


TLS_NETWORKS = (*LOOPBACK, ipaddress.ip_network("::1/128"))


def test_tls_is_verified_against_the_trusted_cas(
    tls_origin: tuple[str, Path], connections: list[tuple[str, int]]
) -> None:
    base, ca_file = tls_origin
    untrusted = Run([base], OutboundPolicy(allowed_networks=TLS_NETWORKS))
    assert "TLS" in untrusted.refused(base + "/echo", "failed").message
    trusted = OutboundPolicy(allowed_networks=TLS_NETWORKS, ca_bundle=str(ca_file))
    answer = json.loads(Run([base], trusted).fetch(base + "/echo").body)
    assert answer["headers"]["host"] == base.removeprefix("https://")
    # The certificate is for localhost: the same server by its address is refused.
    by_address = base.replace("localhost", "127.0.0.1")
    assert "TLS" in Run([by_address], trusted).refused(by_address + "/echo", "failed").message
