from pathlib import Path

from edgefn.testing import TestClient, load_app

client = TestClient(load_app(Path(__file__).parent.parent))


def test_index() -> None:
    response = client.get("/")
    assert response.status == 200
    assert response.json() == {"message": "Hello from {{name}}!"}


def test_hello_uses_query() -> None:
    response = client.get("/hello/ada?greeting=Hi")
    assert response.text == "Hi, ada!\n"


def test_echo_rejects_invalid_json() -> None:
    response = client.post("/echo", body=b"{not json")
    assert response.status == 400
    assert response.json()["error"]["code"] == "bad_request"
