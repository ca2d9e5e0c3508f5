"""edgefn.fetch and Image.from_url in the SDK: the API, its checks, its errors and
their uncaught statuses, and `TestClient(fetch=...)`, natively; then one function
built with the guest glue: under a fake outbound capability (what the glue sends
and how it reads answers and failures), and end to end through a gateway against
a loopback origin once the host side is there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import component as wc

from edgefn import (
    App,
    FetchResponse,
    Headers,
    HTTPError,
    OutboundError,
    OutboundFailed,
    OutboundNotAllowed,
    OutboundTimeout,
    OutboundTooLarge,
    Request,
    fetch,
)
from edgefn.image import Image, raise_failure
from edgefn.outbound import timeout_ms
from edgefn.testing import FetchRequest, TestClient
from edgefn_contract.outbound import IMAGE_FAILURE_PREFIX, STATUSES
from edgefn_platform import BuildResult, build
from edgefn_runtime import CONTRACT_VERSION, Engine, Sandbox
from edgefn_runtime import Request as SandboxRequest
from edgefn_runtime.capabilities import Capability, host_call, installed

ROOT = Path(__file__).resolve().parent.parent
RESIZE = ROOT / "functions" / "image_resize"
SAMPLE = (RESIZE / "assets" / "sample.jpg").read_bytes()
ORIGIN = "https://origin.example.com"
# The end-to-end tests' function; its /glue/ routes are this module's.
FETCHING = Path(__file__).resolve().parent / "functions" / "outbound"


def proxy_app() -> App:
    """Fetches what the query says and reports what it got."""
    app = App()

    @app.route("/", methods=["GET", "POST"])
    def proxy(request: Request) -> dict[str, Any]:
        answer = fetch(
            request.query["url"],
            method=request.query.get("method", "GET"),
            headers={"x-test": "1"},
            body=request.body or None,
        )
        return {
            "status": answer.status,
            "ok": answer.ok,
            "type": answer.headers.get("CONTENT-TYPE"),
            "text": answer.text(),
            "url": answer.url,
        }

    @app.get("/caught")
    def caught(request: Request) -> dict[str, Any]:
        try:
            fetch(request.query["url"])
        except OutboundError as exc:
            return {"kind": exc.kind, "status": exc.status, "code": exc.code}
        return {"kind": None}

    @app.get("/thumb")
    def thumb(request: Request) -> Any:
        return Image.from_url(request.query["url"]).resize(40).send("png")

    return app


# The API -----------------------------------------------------------------------


def test_a_fetch_response_reads_like_a_request() -> None:
    answer = FetchResponse(
        200, {"Content-Type": "application/json; charset=latin-1"}, '{"a": "é"}'.encode("latin-1")
    )
    assert answer.ok and answer.url == ""
    assert answer.headers["content-type"] == answer.headers.get("CONTENT-TYPE")
    assert answer.text() == '{"a": "é"}'
    # JSON is UTF-8 (RFC 8259), whatever the charset says; json.loads detects UTF-16/32.
    assert FetchResponse(body='{"a": "é"}'.encode("utf-16")).json() == {"a": "é"}
    assert not FetchResponse(404).ok and not FetchResponse(199).ok and FetchResponse(299).ok
    repeated = FetchResponse(headers=Headers([("x-a", "1"), ("X-A", "2")]))
    assert repeated.headers.getlist("x-a") == ["1", "2"]


def test_fetched_text_defaults_to_utf8_and_survives_bad_bytes() -> None:
    assert FetchResponse(body="naïve").text() == "naïve"
    assert FetchResponse(body=b"\xff ok").text() == "\ufffd ok"
    unknown = FetchResponse(headers=[("content-type", "text/plain; charset=nope")], body=b"hi")
    assert unknown.text() == "hi"
    with pytest.raises(ValueError, match="Expecting value"):
        FetchResponse(body=b"<html>").json()


def test_a_fetch_response_status_is_checked() -> None:
    with pytest.raises(ValueError, match="status must be an int from 100 to 599"):
        FetchResponse(600)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (OutboundNotAllowed, "not_allowed"),
        (OutboundTimeout, "timeout"),
        (OutboundTooLarge, "too_large"),
        (OutboundFailed, "failed"),
    ],
)
def test_each_error_has_the_contracts_status_and_code(
    error: type[OutboundError], kind: str
) -> None:
    exc = error("why")
    assert isinstance(exc, OutboundError) and isinstance(exc, HTTPError)
    assert (exc.kind, (exc.status, exc.code), exc.message) == (kind, STATUSES[kind], "why")


@pytest.mark.parametrize("kind", list(STATUSES))
def test_an_image_url_failure_raises_the_outbound_error(kind: str) -> None:
    with pytest.raises(OutboundError) as raised:
        raise_failure(IMAGE_FAILURE_PREFIX + kind, "refused")
    assert (raised.value.kind, raised.value.message) == (kind, "refused")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"url": "ftp://origin.example.com/"}, ValueError, "absolute http:// or https:// URL"),
        ({"url": "/relative"}, ValueError, "absolute http:// or https:// URL"),
        ({"url": "https:///no-host"}, ValueError, "absolute http:// or https:// URL"),
        ({"url": "https://a.example.com:99999/"}, ValueError, "is not a valid URL"),
        ({"url": "https://a.example.com/\r\nx: y"}, ValueError, "control characters"),
        ({"url": b"https://a.example.com/"}, TypeError, "url must be a str"),
        ({"method": "CONNECT"}, ValueError, "method must be one of GET, HEAD"),
        ({"method": "TRACE"}, ValueError, "method must be one of"),
        ({"headers": {"bad name": "v"}}, ValueError, "not a valid field name"),
        ({"headers": {"": "v"}}, ValueError, "not a valid field name"),
        ({"headers": {"x-a": "1\r\nx-forged: 2"}}, ValueError, "CR, LF or NUL"),
        ({"headers": {"x-a": "1\nx-forged: 2"}}, ValueError, "CR, LF or NUL"),
        ({"headers": {"x-a": "1\0"}}, ValueError, "CR, LF or NUL"),
        ({"headers": {"x-a": 1}}, TypeError, "must be str"),
        ({"headers": [("x-a", "1", "2")]}, TypeError, "pairs"),
        ({"headers": "x-a: 1"}, TypeError, "pairs"),
        ({"body": 3}, TypeError, "body must be bytes or str"),
        ({"timeout": 0}, ValueError, "positive number of seconds"),
        ({"timeout": -1.5}, ValueError, "positive number of seconds"),
        ({"timeout": float("nan")}, ValueError, "positive number of seconds"),
        ({"timeout": "5"}, TypeError, "number of seconds"),
        ({"timeout": True}, TypeError, "number of seconds"),
        ({"cache": "no"}, TypeError, "cache must be True or False"),
        ({"cache": 0}, TypeError, "cache must be True or False"),
    ],
)
def test_bad_arguments_are_refused_before_the_host_is_asked(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    client = TestClient(App(), fetch=lambda request: b"never")
    client.get("/")  # installs the client's backend
    arguments = {"url": f"{ORIGIN}/a", **kwargs}
    with pytest.raises(error, match=message):
        fetch(**arguments)
    assert client.fetched == []


def test_arguments_are_normalized_for_the_host() -> None:
    client = TestClient(App(), fetch=lambda request: b"")
    client.get("/")
    fetch(f"{ORIGIN}/a", method="post", headers=[("X-A", "1"), ("x-a", "2")], body="é", timeout=2)
    fetch(f"{ORIGIN}/b", headers={"accept": "*/*"}, body=bytearray(b"x"), cache=False)
    assert client.fetched == [
        FetchRequest("POST", f"{ORIGIN}/a", [("X-A", "1"), ("x-a", "2")], "é".encode(), 2.0),
        FetchRequest("GET", f"{ORIGIN}/b", [("accept", "*/*")], b"x", None, cache=False),
    ]
    # The cache is on unless the function says otherwise: the flag is recorded.
    assert [request.cache for request in client.fetched] == [True, False]


def test_the_timeout_is_sent_in_whole_milliseconds_within_u32() -> None:
    assert [timeout_ms(t) for t in (None, 0.0001, 1.5, 1e12)] == [0, 1, 1500, 2**32 - 1]


def test_image_from_url_takes_only_http_urls() -> None:
    assert Image.from_url("HTTPS://origin.example.com/a.jpg").source[0] == "url"
    with pytest.raises(ValueError, match="absolute http:// or https:// URL"):
        Image.from_url("file:///etc/passwd")
    with pytest.raises(TypeError, match="takes a str"):
        Image.from_url(b"https://origin.example.com/a.jpg")  # type: ignore[arg-type]


# TestClient(fetch=...) -----------------------------------------------------------


def test_a_mapping_answers_by_url() -> None:
    answers = {
        f"{ORIGIN}/a": FetchResponse(201, {"Content-Type": "text/plain"}, b"made"),
        f"{ORIGIN}/b": "plain str",
    }
    client = TestClient(proxy_app(), fetch=answers)
    response = client.get(f"/?url={ORIGIN}/a")
    assert response.json() == {
        "status": 201,
        "ok": True,
        "type": "text/plain",
        "text": "made",
        "url": f"{ORIGIN}/a",
    }
    response = client.post(f"/?url={ORIGIN}/b&method=put", body=b"payload")
    assert response.json()["text"] == "plain str" and response.json()["status"] == 200
    assert [(r.method, r.url, r.headers, r.body) for r in client.fetched] == [
        ("GET", f"{ORIGIN}/a", [("x-test", "1")], b""),
        ("PUT", f"{ORIGIN}/b", [("x-test", "1")], b"payload"),
    ]


def test_a_callable_answers_and_sees_the_request() -> None:
    def origin(request: FetchRequest) -> FetchResponse:
        return FetchResponse(200, {"content-type": "text/plain"}, f"{request.method} {request.url}")

    client = TestClient(proxy_app(), fetch=origin)
    assert client.get(f"/?url={ORIGIN}/x").json()["text"] == f"GET {ORIGIN}/x"


def test_a_url_missing_from_the_mapping_is_not_allowed() -> None:
    client = TestClient(proxy_app(), fetch={f"{ORIGIN}/a": b""})
    response = client.get("/?url=https://elsewhere.example.com/")
    assert response.status == 500
    error = response.json()["error"]
    assert error["code"] == "outbound_not_allowed"
    assert "is not in TestClient's `fetch` mapping" in error["message"]
    assert len(client.fetched) == 1


def test_the_missing_url_message_names_what_the_mapping_has() -> None:
    answers = {f"{ORIGIN}/{n}": b"" for n in range(7)}
    client = TestClient(proxy_app(), fetch=answers)
    message = client.get(f"/?url={ORIGIN}/x").json()["error"]["message"]
    assert message.endswith(
        f"(it has {ORIGIN}/0, {ORIGIN}/1, {ORIGIN}/2, {ORIGIN}/3, {ORIGIN}/4 and 2 more)"
    )
    message = TestClient(proxy_app(), fetch={}).get(f"/?url={ORIGIN}/x").json()["error"]["message"]
    assert message.endswith("(it has nothing)")


def test_a_head_is_answered_without_a_body_as_the_host_would() -> None:
    client = TestClient(proxy_app(), fetch={f"{ORIGIN}/a": FetchResponse(200, body=b"body")})
    assert client.get(f"/?url={ORIGIN}/a&method=HEAD").json()["text"] == ""
    assert client.get(f"/?url={ORIGIN}/a").json()["text"] == "body"


def test_without_fetch_the_error_says_how_to_answer() -> None:
    response = TestClient(proxy_app()).get(f"/?url={ORIGIN}/a")
    assert response.status == 500
    error = response.json()["error"]
    assert error["code"] == "outbound_not_allowed"
    assert "TestClient(app, fetch=" in error["message"]


@pytest.mark.parametrize(
    "error", [OutboundNotAllowed, OutboundTimeout, OutboundTooLarge, OutboundFailed]
)
def test_a_simulated_failure_answers_its_status_when_uncaught(error: type[OutboundError]) -> None:
    def origin(request: FetchRequest) -> FetchResponse:
        raise error("simulated")

    client = TestClient(proxy_app(), fetch=origin)
    response = client.get(f"/?url={ORIGIN}/a")
    status, code = STATUSES[error.kind]
    assert (response.status, response.json()) == (
        status,
        {"error": {"code": code, "message": "simulated"}},
    )
    caught = client.get(f"/caught?url={ORIGIN}/a").json()
    assert caught == {"kind": error.kind, "status": status, "code": code}


def test_a_wrong_answer_type_or_fetch_option_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="mapping or a callable"):
        TestClient(App(), fetch=42)  # type: ignore[arg-type]
    client = TestClient(proxy_app(), fetch={f"{ORIGIN}/a": 42})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="answer with a FetchResponse, bytes or str"):
        client.get(f"/?url={ORIGIN}/a")


def test_image_from_url_renders_the_fetched_bytes_as_a_body_would() -> None:
    app = proxy_app()

    @app.post("/body")
    def body(request: Request) -> Any:
        return Image.from_body().resize(40).send("png")

    client = TestClient(app, fetch={f"{ORIGIN}/sample.jpg": SAMPLE})
    from_url = client.get(f"/thumb?url={ORIGIN}/sample.jpg")
    from_body = client.post("/body", body=SAMPLE)
    assert from_url.status == 200, from_url.text
    assert from_url.headers["content-type"] == "image/png"
    assert from_url.body == from_body.body
    assert client.fetched == [FetchRequest("GET", f"{ORIGIN}/sample.jpg", [], b"", None)]


def test_image_from_url_failures_are_the_outbound_errors() -> None:
    client = TestClient(
        proxy_app(),
        fetch={f"{ORIGIN}/gone.jpg": FetchResponse(404), f"{ORIGIN}/junk.jpg": b"junk"},
    )
    refused = client.get("/thumb?url=https://elsewhere.example.com/a.jpg")
    assert refused.status == 500 and refused.json()["error"]["code"] == "outbound_not_allowed"
    gone = client.get(f"/thumb?url={ORIGIN}/gone.jpg")
    assert gone.status == 502 and gone.json()["error"]["code"] == "outbound_failed"
    junk = client.get(f"/thumb?url={ORIGIN}/junk.jpg")
    assert junk.status == 415 and junk.json()["error"]["code"] == "unsupported_image"


# In the sandbox -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetching_build() -> BuildResult:
    return build(FETCHING)


OUTBOUND_IMPORT = f"edgefn:http/outbound@{CONTRACT_VERSION}"


@dataclass
class FakeOutbound(Capability):
    """A stand-in for the host's outbound capability: records what the guest glue
    sent and answers with `answer` (an `incoming-response` without a body, or a
    failure kind). Bodies it answers are the real host's business."""

    name = "fake-outbound"
    imports = frozenset({OUTBOUND_IMPORT})
    stdout_reserve = 64 * 1024
    answer: tuple[int, str, str] | str = (200, "", "")
    seen: list[dict[str, Any]] = field(default_factory=list)

    def link(self, linker: wc.Linker) -> None:
        with linker.root() as root, root.add_instance(OUTBOUND_IMPORT) as instance:
            instance.add_func("fetch", self._fetch)

    def _fetch(self, store: wasmtime.StoreContext, request: Any) -> wc.Variant:
        context, _ = host_call(store)
        fields = dict(request.__dict__)
        assert context.take_output is not None
        fields["body-bytes"] = context.take_output(fields["body"])
        self.seen.append(fields)
        record = wc.Record()
        if isinstance(self.answer, str):
            record.__dict__.update(kind=self.answer, message=f"the fake says {self.answer}")
            return wc.Variant("err", record)
        status, headers, url = self.answer
        record.__dict__.update(status=status, headers=headers, body=0, url=url)
        return wc.Variant("ok", record)


@pytest.fixture(scope="module")
def fake_outbound() -> FakeOutbound:
    return FakeOutbound()


@pytest.fixture(scope="module")
def faked(fetching_build: BuildResult, fake_outbound: FakeOutbound) -> Iterator[Sandbox]:
    """The function under a host whose outbound capability is the fake."""
    others = [c for c in installed() if c.name != "outbound"]  # every component imports them
    with Engine(capabilities=[*others, fake_outbound]) as engine:
        yield engine.load(fetching_build.path)


@pytest.mark.wasm
def test_the_guest_glue_sends_what_fetch_was_given(
    faked: Sandbox, fake_outbound: FakeOutbound
) -> None:
    fake_outbound.answer = (201, "Content-Type: application/json\nx-a: 1\nX-A: 2\n", "http://o/b")
    fake_outbound.seen.clear()
    outcome = faked.invoke(SandboxRequest("POST", "/glue/", "url=http://o/a", body=b"payload"))
    assert json.loads(outcome.response.body) == {
        "status": 201,
        "type": "application/json",
        "x-a": ["1", "2"],
        "json": None,
        "url": "http://o/b",
    }
    assert fake_outbound.seen == [
        {
            "method": "POST",
            "url": "http://o/a",
            "headers": "x-test: 1\n",
            "body": 7,
            "timeout-ms": 5000,
            "cache": True,
            "body-bytes": b"payload",
        }
    ]
    # fetch(..., cache=False) reaches the host as the WIT `cache` flag.
    fake_outbound.seen.clear()
    faked.invoke(SandboxRequest("GET", "/glue/", "url=http://o/a&cache=0"))
    assert [seen["cache"] for seen in fake_outbound.seen] == [False]


@pytest.mark.wasm
def test_the_guest_glue_raises_the_failures_kind(
    faked: Sandbox, fake_outbound: FakeOutbound
) -> None:
    for kind, (status, code) in STATUSES.items():
        fake_outbound.answer = kind
        caught = faked.invoke(SandboxRequest("GET", "/glue/caught", "url=http://o/a"))
        assert json.loads(caught.response.body) == {"kind": kind, "code": code}
        uncaught = faked.invoke(SandboxRequest("GET", "/glue/uncaught", "url=http://o/a"))
        assert uncaught.response.status == status
        assert json.loads(uncaught.response.body)["error"] == {
            "code": code,
            "message": f"the fake says {kind}",
        }


@pytest.mark.wasm
def test_a_fetch_body_never_lands_in_the_response(
    faked: Sandbox, fake_outbound: FakeOutbound
) -> None:
    fake_outbound.answer = "failed"
    fake_outbound.seen.clear()
    outcome = faked.invoke(SandboxRequest("POST", "/glue/", "url=http://o/a", body=b"payload"))
    assert fake_outbound.seen[0]["body-bytes"] == b"payload"
    assert json.loads(outcome.response.body)["error"]["code"] == "outbound_failed"
    # Nor between two chunks of a streamed response.
    fake_outbound.seen.clear()
    streamed = faked.invoke(SandboxRequest("GET", "/glue/streaming", "url=http://o/a"))
    assert streamed.response.body == b"first second"
    assert fake_outbound.seen[0]["body-bytes"] == b"sent with the fetch"
