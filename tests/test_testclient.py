"""edgefn.testing.TestClient as the README describes it: relative `assets` are
the function's folder's, whatever the working directory, and with
`raise_exceptions=False` whatever a handler raises (SystemExit too) is the 500
the sandbox answers."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from edgefn import App
from edgefn.testing import TestClient, load_app
from edgefn_runtime import GuestError, Limits, Request, Sandbox
from images import encode, photo

HOSTILE = Path(__file__).resolve().parent / "functions" / "hostile"
APP = """
from edgefn import App
from edgefn.image import Image

app = App()


@app.get("/")
def width(request):
    return {"width": Image.from_asset("logo.png").probe().width}
"""


@pytest.fixture
def function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A function folder with an asset, and a working directory elsewhere."""
    folder = tmp_path / "fn"
    (folder / "assets").mkdir(parents=True)
    (folder / "app.py").write_text(APP)
    (folder / "edgefn.toml").write_text('name = "fn"\nassets = "assets"\n')
    (folder / "assets" / "logo.png").write_bytes(encode(photo(37, 20), "PNG"))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "assets").mkdir(parents=True)  # a decoy the old lookup would have read
    monkeypatch.chdir(elsewhere)
    return folder


def test_relative_assets_are_read_from_the_folder_load_app_loaded(function: Path) -> None:
    client = TestClient(load_app(function), assets="assets")
    assert client.assets == function / "assets"
    response = client.get("/")
    assert (response.status, response.json()) == (200, {"width": 37})


def test_relative_assets_of_an_app_imported_otherwise(function: Path) -> None:
    spec = importlib.util.spec_from_file_location("_testclient_fn_app", function / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        response = TestClient(module.app, assets="assets").get("/")
    finally:
        del sys.modules[spec.name]
    assert (response.status, response.json()) == (200, {"width": 37})


def test_a_missing_assets_folder_is_named(function: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(function / "static"))):
        TestClient(load_app(function), assets="static")


app = App()


@app.get("/exit")
def leave(request: object) -> None:
    sys.exit(3)


@app.get("/exit-quietly")
def leave_quietly(request: object) -> None:
    sys.exit()


@app.get("/interrupt")
def interrupt(request: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("path", "message"), [("/exit", "SystemExit: 3"), ("/exit-quietly", "SystemExit")]
)
def test_system_exit_is_a_500_like_any_exception(path: str, message: str) -> None:
    response = TestClient(app, raise_exceptions=False).get(path)
    assert response.status == 500
    assert response.json() == {"error": {"code": "function_error", "message": message}}


def test_system_exit_still_reaches_the_test_when_exceptions_are_raised() -> None:
    with pytest.raises(SystemExit):
        TestClient(app).get("/exit")


def test_a_keyboard_interrupt_stops_the_tests_either_way() -> None:
    with pytest.raises(KeyboardInterrupt):
        TestClient(app, raise_exceptions=False).get("/interrupt")


def test_native_and_sandbox_answer_sys_exit_alike(hostile: Sandbox) -> None:
    with pytest.raises(GuestError) as caught:
        hostile.invoke(Request("GET", "/exit", ""), Limits(timeout=5.0))
    native = TestClient(load_app(HOSTILE), raise_exceptions=False).get("/exit")
    assert (native.status, native.json()["error"]["code"]) == (
        caught.value.status,
        caught.value.code,
    )
    assert native.json()["error"]["message"] == str(caught.value)


def test_a_body_given_as_chunks_is_streamed_chunk_by_chunk_as_in_the_sandbox() -> None:
    """As a function with `stream_request_body` reads an upload (test_request_stream.py)."""
    client = TestClient(load_app(HOSTILE), raise_exceptions=False)
    answer = client.post("/upload", body=[b"ab", b"c"]).json()
    assert (answer["size"], answer["chunks"]) == (3, 2)
    assert client.post("/upload?whole=1", body=[b"ab", b"c"]).json()["size"] == 3
    twice = client.post("/upload?twice=1", body=[b"ab"])
    assert twice.status == 500 and "already streamed" in twice.text
