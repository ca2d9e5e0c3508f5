"""Image functions in the real sandbox: same bytes as natively, budgets enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefn.testing import TestClient, load_app
from edgefn_platform import build
from edgefn_runtime import Engine, FuelExhausted, Limits, MemoryLimitExceeded, Request, Sandbox
from images import encode, photo, png_bomb

RESIZE = Path(__file__).resolve().parent.parent / "functions" / "image_resize"
LIMITS = Limits(
    memory=128 * 2**20, fuel=4_000_000_000, timeout=10, max_body=50 * 2**20, max_response=50 * 2**20
)


@pytest.fixture(scope="module")
def resize(engine: Engine) -> Sandbox:
    result = build(RESIZE)
    return engine.load(result.path, env={"SIGNING_KEY": ""}, assets=RESIZE / "assets")


@pytest.mark.parametrize(
    "query", ["w=300&format=png", "w=200&h=200&fit=cover&format=jpeg", "w=150&format=webp&q=70"]
)
def test_wasm_and_native_give_the_same_bytes(resize: Sandbox, query: str) -> None:
    wasm = resize.invoke(Request("GET", "/sample.jpg", query), LIMITS).response
    native = TestClient(load_app(RESIZE), assets=RESIZE / "assets").get(f"/sample.jpg?{query}")
    assert wasm.status == native.status == 200
    assert wasm.body == native.body
    assert dict(wasm.headers)["content-type"] == native.headers["content-type"]


def test_body_source_and_usage(resize: Sandbox) -> None:
    body = encode(photo(1200, 800), "JPEG", quality=90)
    outcome = resize.invoke(Request("POST", "/", "w=400&format=jpeg", body=body), LIMITS)
    assert outcome.response.status == 200
    assert outcome.response.body[:3] == b"\xff\xd8\xff"
    assert outcome.usage.image_pixels > 400 * 266


def test_header_bomb_is_413_without_decoding(resize: Sandbox) -> None:
    outcome = resize.invoke(Request("POST", "/", "w=100", body=png_bomb()), LIMITS)
    assert outcome.response.status == 413
    assert json.loads(outcome.response.body)["error"]["code"] == "image_too_large"
    assert outcome.usage.execute_seconds < 0.5


def test_pixel_work_is_charged_to_fuel(resize: Sandbox) -> None:
    body = encode(photo(3000, 2000), "PNG")
    with pytest.raises(FuelExhausted, match="image work"):
        resize.invoke(
            Request("POST", "/", "w=100", body=body),
            Limits(fuel=80_000_000, timeout=10, max_body=50 * 2**20),
        )


def test_decoded_pixels_count_against_memory(resize: Sandbox) -> None:
    body = encode(photo(4000, 3000), "PNG")
    with pytest.raises(MemoryLimitExceeded):
        resize.invoke(
            Request("POST", "/", "w=100", body=body),
            Limits(memory=32 * 2**20, timeout=10, max_body=50 * 2**20),
        )


def test_max_image_pixels_is_tunable(resize: Sandbox) -> None:
    outcome = resize.invoke(
        Request("GET", "/sample.jpg", "w=100"), Limits(max_image_pixels=500_000)
    )
    assert outcome.response.status == 413
