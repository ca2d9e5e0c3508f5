"""edgefn.Request, Response and the data structures behind them."""

from __future__ import annotations

import pytest

from edgefn import (
    Headers,
    HTTPError,
    JSONResponse,
    QueryParams,
    Request,
    Response,
    json,
    redirect,
    text,
)


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Id", "7")])
    assert headers["SET-COOKIE"] == "a=1"
    assert headers.getlist("set-cookie") == ["a=1", "b=2"]
    assert "x-id" in headers and "missing" not in headers
    assert list(headers) == ["Set-Cookie", "X-Id"]
    assert len(headers) == 2


def test_query_keeps_repeats_and_blanks() -> None:
    query = QueryParams.parse("tag=a&tag=b&empty=&plus=a+b&pct=%2F")
    assert query.getlist("tag") == ["a", "b"]
    assert query["empty"] == ""
    assert query["plus"] == "a b"
    assert query["pct"] == "/"
    assert query.get("missing") is None


def test_body_is_read_lazily_once() -> None:
    reads = []

    def source() -> bytes:
        reads.append(1)
        return b"payload"

    request = Request("post", "/", body=source)
    assert reads == []
    assert request.body == b"payload" and request.body == b"payload"
    assert reads == [1]
    assert request.method == "POST"


def test_stream_gives_chunks_once_and_a_body_read_whole_in_one() -> None:
    streamed = Request("POST", "/", body=lambda: iter([b"a", b"", b"b"]))
    assert list(streamed.stream()) == [b"a", b"", b"b"]
    for again in (lambda: streamed.body, streamed.stream):
        with pytest.raises(RuntimeError, match="already streamed"):
            again()
    gathered = Request("POST", "/", body=iter([b"a", b"b"]))
    assert gathered.body == b"ab" and list(gathered.stream()) == [b"ab"]
    assert list(Request("GET", "/").stream()) == []


def test_text_uses_the_declared_charset() -> None:
    request = Request(
        "POST",
        "/",
        headers=[("Content-Type", "text/plain; charset=latin-1")],
        body="café".encode("latin-1"),
    )
    assert request.text() == "café"


def test_json_parses_and_invalid_json_is_a_400() -> None:
    assert Request("POST", "/", body=b'{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(HTTPError) as caught:
        Request("POST", "/", body=b"{oops").json()
    assert caught.value.status == 400
    assert "not valid JSON" in caught.value.message


def test_undecodable_text_is_a_400() -> None:
    with pytest.raises(HTTPError, match="not valid utf-8"):
        Request("POST", "/", body=b"\xff\xfe").text()


def test_response_encodes_str_and_sets_media_type() -> None:
    response = Response("héllo", media_type="text/html")
    assert response.body == "héllo".encode()
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def test_response_rejects_bad_status_and_body() -> None:
    for status in (99, 101, 600):
        with pytest.raises(ValueError, match="200 to 599"):
            Response(status=status)
    with pytest.raises(TypeError, match="must be bytes or str"):
        Response(123)  # type: ignore[arg-type]


def test_response_headers_replace_and_append() -> None:
    response = Response(headers={"X-A": "1"})
    response.headers["x-a"] = "2"
    response.headers.append("Set-Cookie", "a=1")
    response.headers.append("Set-Cookie", "b=2")
    assert response.headers.multi_items() == [
        ("x-a", "2"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    with pytest.raises(TypeError, match="must be str"):
        response.headers["x-n"] = 5  # type: ignore[assignment]


def test_shortcuts() -> None:
    assert json({"a": "é"}, status=201).body == '{"a":"é"}'.encode()
    assert isinstance(json([]), JSONResponse)
    assert text("hi").headers["content-type"] == "text/plain; charset=utf-8"
    moved = redirect("/new", 308)
    assert (moved.status, moved.headers["location"]) == (308, "/new")
    with pytest.raises(ValueError, match="redirect status"):
        redirect("/x", 200)


def test_http_error_validates_status_and_derives_code() -> None:
    assert HTTPError(422).code == "unprocessable_content"
    assert HTTPError(409, "taken", code="name_taken").code == "name_taken"
    with pytest.raises(ValueError, match="400-599"):
        HTTPError(302)
