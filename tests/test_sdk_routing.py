"""edgefn.App: routes, path parameters, 404/405, return values."""

from __future__ import annotations

import pytest

from edgefn import App, HTTPError, Request, Response, StreamingResponse
from edgefn.testing import TestClient

app = App()


@app.get("/items/{item_id:int}")
def item(request: Request) -> dict[str, object]:
    return {"id": request.path_params["item_id"]}


@app.get("/users/{name}")
def user(request: Request) -> str:
    return f"user {request.path_params['name']}"


@app.get("/files/{rest:path}")
def files(request: Request) -> str:
    return request.path_params["rest"]


@app.route("/things", methods=["POST", "put"])
def things(request: Request) -> Response:
    return Response(f"{request.method} thing", status=201)


@app.delete("/things")
def delete_thing(request: Request) -> None:
    return None


@app.get("/bytes")
def raw(request: Request) -> bytes:
    return b"\x00\x01"


@app.get("/stream")
def stream(request: Request) -> StreamingResponse:
    return StreamingResponse(f"{i}," for i in range(5))


@app.get("/teapot")
def teapot(request: Request) -> None:
    raise HTTPError(418, "short and stout", headers={"x-pot": "1"})


@app.get("/bad-return")
def bad_return(request: Request) -> object:
    return 42


client = TestClient(app)


def test_int_path_parameter_is_converted() -> None:
    response = client.get("/items/42")
    assert response.status == 200
    assert response.json() == {"id": 42}


def test_int_converter_rejects_non_digits_with_404() -> None:
    response = client.get("/items/abc")
    assert response.status == 404
    assert response.json()["error"]["code"] == "not_found"


def test_str_parameter_matches_one_segment() -> None:
    assert client.get("/users/ada").text == "user ada"
    response = client.get("/users/ada/extra")
    assert response.status == 404 and response.json()["error"]["code"] == "not_found"


def test_path_parameter_matches_the_rest() -> None:
    assert client.get("/files/a/b/c.txt").text == "a/b/c.txt"


def test_unknown_path_is_404_with_json_error() -> None:
    response = client.get("/nowhere")
    assert response.status == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "no route matches /nowhere"}
    }


def test_wrong_method_is_405_with_allow() -> None:
    response = client.patch("/things")
    assert response.status == 405
    assert response.headers["allow"] == "DELETE, POST, PUT"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_methods_are_case_insensitive_and_status_kept() -> None:
    response = client.put("/things")
    assert (response.status, response.text) == (201, "PUT thing")


def test_get_routes_answer_head() -> None:
    assert client.request("HEAD", "/users/x").status == 200


def test_none_is_204_and_bytes_are_octet_stream() -> None:
    assert client.delete("/things").status == 204
    response = client.get("/bytes")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.body == b"\x00\x01"


def test_streaming_response_is_joined() -> None:
    assert client.get("/stream").text == "0,1,2,3,4,"


def test_http_error_keeps_status_message_and_headers() -> None:
    response = client.get("/teapot")
    assert response.status == 418
    assert response.headers["x-pot"] == "1"
    assert response.json()["error"] == {"code": "im_a_teapot", "message": "short and stout"}


def test_unsupported_return_type_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="handler returned int"):
        client.get("/bad-return")


def test_unhandled_exception_becomes_500_when_not_raising() -> None:
    response = TestClient(app, raise_exceptions=False).get("/bad-return")
    assert response.status == 500
    assert response.json()["error"]["code"] == "function_error"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no-slash", "must start with '/'"),
        ("/x/{id:uuid}", "unknown converter 'uuid'"),
        ("/x/{id}/{id}", "appears twice"),
    ],
)
def test_bad_route_definitions_fail_at_decoration(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        App().get(path)


def test_routes_match_in_declaration_order() -> None:
    ordered = App()
    ordered.get("/a/{x}")(lambda request: "param")
    ordered.get("/a/fixed")(lambda request: "fixed")
    assert TestClient(ordered).get("/a/fixed").text == "param"
