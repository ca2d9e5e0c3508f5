"""Image functions in the real sandbox: same bytes as natively, budgets enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import attacks
from edgefn.image import MAX_SOURCE_BYTES, Image
from edgefn.testing import TestClient, load_app
from edgefn_platform import build
from edgefn_runtime import (
    Engine,
    FuelExhausted,
    GuestError,
    Limits,
    MemoryLimitExceeded,
    Outcome,
    Request,
    Sandbox,
)
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
    error = json.loads(outcome.response.body)["error"]
    assert error["code"] == "image_too_large" and "the limit is 0.5 MP" in error["message"], error


def _json(outcome: Outcome) -> dict:
    return json.loads(outcome.response.body)


@pytest.mark.parametrize("pad", [0, 60_000])
def test_bytes_sources_cross_out_of_band(hostile: Sandbox, pad: int) -> None:
    outcome = hostile.invoke(Request("GET", "/image-bytes", f"pad={pad}"))
    # Exactly the JSON: the image bytes written to stdout are not part of the body.
    assert (outcome.response.status, _json(outcome)) == (200, {"width": 3, "height": 2})


def test_bytes_sources_work_on_a_reused_instance(reused: Sandbox) -> None:
    for _ in range(3):
        outcome = reused.invoke(Request("GET", "/image-bytes", "pad=1000"))
        assert _json(outcome) == {"width": 3, "height": 2}
        echoed = reused.invoke(Request("POST", "/echo", body=b"after"))
        assert echoed.response.body == b"after"


def test_the_sdk_refuses_bytes_sources_over_64_kib(hostile: Sandbox) -> None:
    with pytest.raises(GuestError, match="at most 64 KiB"):
        hostile.invoke(Request("GET", "/image-bytes", "pad=70000"))
    with pytest.raises(ValueError, match="at most 64 KiB"):
        Image.from_bytes(b"\0" * (MAX_SOURCE_BYTES + 1))


def test_the_host_checks_a_claimed_length_before_reading(hostile: Sandbox) -> None:
    # A guest past the SDK claims 50 MB. As list<u8>, wasmtime-py would have
    # converted it byte by byte (about 70 s of host CPU) before any check ran.
    outcome = hostile.invoke(Request("GET", "/image-bytes-claim", "n=50000000"))
    assert _json(outcome)["kind"] == "invalid_pipeline"
    assert "limited to 64 KiB" in _json(outcome)["message"]
    assert outcome.usage.execute_seconds < 0.5
    attacks.record(
        "Image capability (tests/test_image_sandbox.py)",
        "guest claims a 50 MB `bytes` image source past the SDK",
        f"refused before a byte is read (invalid_pipeline) in "
        f"{outcome.usage.execute_seconds * 1000:.0f} ms",
    )
    # Claimed but never written: the host reads only what is there (zeros).
    unwritten = hostile.invoke(Request("GET", "/image-bytes-claim", "n=100")).response
    assert dict(unwritten.headers)["x-kind"] == "unsupported_image"
