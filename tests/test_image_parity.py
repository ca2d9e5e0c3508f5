"""Native and sandboxed runs answer every image request identically, errors included.

Each case is one request to the fixture function tests/functions/image_parity,
sent through `edgefn.testing.TestClient` (the host's image service in-process)
and through `Sandbox.invoke` of the built component; status, headers and body
bytes must be equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from edgefn.image import FITS, FORMATS, MAX_SOURCE_BYTES
from edgefn.testing import TestClient, load_app
from edgefn_platform import build
from edgefn_runtime import Engine, Limits, Request, Sandbox
from images import encode, jpeg_with_orientation, photo, png_bomb

PARITY = Path(__file__).resolve().parent / "functions" / "image_parity"
ASSETS = PARITY / "assets"
# What edgefn.testing runs natively under: the runtime's default limits.
LIMITS = Limits()

JPEG = encode(photo(160, 120, seed=5), "JPEG", quality=90)
PNG_RGBA = encode(photo(64, 48, mode="RGBA", seed=6), "PNG")
ROTATED = jpeg_with_orientation(6, 80, 40)


def _case(spec: dict[str, Any], body: bytes = JPEG) -> tuple[dict[str, Any], bytes]:
    return spec, body


def _resize(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"calls": [["resize", list(args), kwargs]], "send": {"format": "png"}}


CASES: dict[str, tuple[dict[str, Any], bytes]] = {
    # Every fit, with and without a box to fill, and the fit a hand-made op leaves out.
    **{f"resize-{fit}": _case(_resize(70, 70, fit=fit)) for fit in FITS},
    **{f"resize-{fit}-upscale": _case(_resize(200, 90, fit=fit, upscale=True)) for fit in FITS},
    "resize-width": _case(_resize(50)),
    "resize-height": _case(_resize(None, 30)),
    "resize-cover-gravity": _case(_resize(60, 60, fit="cover", gravity="northwest")),
    "resize-contain-background": _case(_resize(90, 40, fit="contain", background="#ff0000")),
    "resize-no-fit": _case({"ops": [{"op": "resize", "width": 70, "height": 70}]}),
    "resize-no-fit-first-of-two": _case(
        {"ops": [{"op": "resize", "width": 40, "height": 40}, {"op": "flip"}]}
    ),
    # Crops, turns and mirrors.
    "crop-gravity": _case({"calls": [["crop", [50, 40], {"gravity": "southeast"}]]}),
    "crop-box": _case({"calls": [["crop", [30, 20], {"left": 10, "top": 5}]]}),
    **{
        f"rotate-{degrees}": _case({"calls": [["rotate", [degrees], {}]]})
        for degrees in (90, 180, 270)
    },
    **{
        f"flip-{direction}": _case({"calls": [["flip", [direction], {}]]})
        for direction in ("horizontal", "vertical")
    },
    "orient-auto": _case({"send": {"format": "png"}}, ROTATED),
    "orient-kept": _case({"calls": [["orient", [False], {}]], "send": {"format": "png"}}, ROTATED),
    # Stamps.
    "text": _case({"calls": [["text", ["© edgefn"], {"size": 0.1, "color": "#00ff00"}]]}),
    "text-tiled": _case({"calls": [["text", ["x"], {"tile": True, "opacity": 0.8}]]}),
    "overlay": _case({"calls": [["overlay", ["logo.png"], {"gravity": "north"}]]}),
    "overlay-tiled": _case({"calls": [["overlay", ["logo.png"], {"tile": True, "scale": 0.1}]]}),
    # Every output format, a quality, a background for flattened transparency.
    **{f"format-{fmt}": _case({"send": {"format": fmt}}) for fmt in FORMATS},
    "quality": _case({"send": {"format": "webp", "quality": 30}}),
    "jpeg-flattened": _case({"send": {"format": "jpeg", "background": "#0000ff"}}, PNG_RGBA),
    # Sources.
    "asset": _case({"source": ["asset", "photo.jpg"], "calls": [["resize", [40], {}]]}),
    "bytes": _case({"source": ["bytes", None], "send": {"format": "webp"}}, PNG_RGBA),
    "probe-body": _case({"probe": True}, ROTATED),
    "probe-asset": _case({"source": ["asset", "logo.png"], "probe": True}),
    "probe-bytes": _case({"source": ["bytes", None], "probe": True}, PNG_RGBA),
    # Refusals: asset paths.
    "asset-missing": _case({"source": ["asset", "missing.jpg"]}),
    "asset-missing-probe": _case({"source": ["asset", "missing.jpg"], "probe": True}),
    "asset-escape": _case({"source": ["asset", "../edgefn.toml"], "probe": True}),
    "asset-escape-absolute": _case({"source": ["asset", str(PARITY / "app.py")]}),
    "asset-a-folder": _case({"source": ["asset", "."]}),
    "asset-missing-overlay": _case({"calls": [["overlay", ["nope.png"], {}]]}),
    "asset-escape-overlay": _case({"calls": [["overlay", ["../edgefn.toml"], {}]]}),
    # Refusals: bytes sources over 64 KiB, in the SDK and (past it) on the host.
    "bytes-over-64k": _case({"source": ["bytes", None]}, b"\0" * (MAX_SOURCE_BYTES + 1)),
    "bytes-over-64k-past-the-sdk": _case(
        {"source": ["raw-bytes", None], "probe": True},
        encode(photo(200, 200, seed=7), "PNG") + b"\0" * MAX_SOURCE_BYTES,
    ),
    "bytes-at-64k-past-the-sdk": _case(
        {"source": ["raw-bytes", None], "probe": True}, PNG_RGBA.ljust(MAX_SOURCE_BYTES, b"\0")
    ),
    # Refusals: formats.
    "format-unknown": _case({"send": {"format": "bmp"}}),
    "format-unknown-past-the-sdk": _case(
        {"raw": json.dumps({"ops": [], "output": {"format": "bmp"}})}
    ),
    "input-not-an-image": _case({"source": ["asset", "notes.txt"]}),
    "input-not-an-image-probe": _case({"probe": True}, b"plain text"),
    "input-truncated": _case({}, JPEG[: len(JPEG) // 2]),
    # Refusals: pixels.
    "too-many-pixels": _case({"calls": [["resize", [100], {}]]}, png_bomb()),
    "too-many-pixels-probe": _case({"probe": True}, png_bomb()),
    "too-many-pixels-resized": _case(
        {"calls": [["resize", [16384, 16384], {"fit": "fill", "upscale": True}]]}
    ),
    # Refusals: pipelines.
    "pipeline-not-json": _case({"raw": "{not json"}),
    "pipeline-unknown-op": _case({"ops": [{"op": "sharpen"}]}),
    "pipeline-bad-fit": _case({"ops": [{"op": "resize", "width": 10, "fit": "squash"}]}),
    "pipeline-bad-gravity": _case(
        {"ops": [{"op": "crop", "width": 9, "height": 9, "gravity": "up"}]}
    ),
    "pipeline-bad-rotation": _case({"ops": [{"op": "rotate", "degrees": 45}]}),
    "pipeline-crop-outside": _case({"calls": [["crop", [50, 50], {"left": 200, "top": 0}]]}),
    "pipeline-empty-text": _case({"ops": [{"op": "text", "text": ""}]}),
    "pipeline-bad-quality": _case({"raw": json.dumps({"output": {"quality": 0}})}),
    "pipeline-bad-colour": _case({"send": {"format": "jpeg", "background": "mauve-ish"}}, PNG_RGBA),
    "pipeline-wrong-types": _case({"ops": [{"op": "crop", "width": "x", "height": 5}]}),
    "sdk-bad-fit": _case({"calls": [["resize", [10], {"fit": "squash"}]]}),
}


@pytest.fixture(scope="module")
def sandbox(engine: Engine) -> Sandbox:
    result = build(PARITY)
    return engine.load(result.path, env=result.manifest.env, assets=ASSETS)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(load_app(PARITY), raise_exceptions=False, assets=ASSETS)


def _headers(items: Any) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in items]


@pytest.mark.wasm
@pytest.mark.parametrize("name", list(CASES))
def test_native_and_sandboxed_answers_are_identical(
    sandbox: Sandbox, client: TestClient, name: str
) -> None:
    spec, body = CASES[name]
    query = urlencode({"spec": json.dumps(spec)})
    wasm = sandbox.invoke(Request("POST", "/", query, body=body), LIMITS).response
    native = client.post(f"/?{query}", body=body)
    assert (native.status, _headers(native.headers.multi_items()), native.body) == (
        wasm.status,
        _headers(wasm.headers),
        wasm.body,
    )


def test_the_cases_cover_successes_and_refusals(client: TestClient) -> None:
    # Guards the table itself: a typo in a spec would turn a case into an error.
    statuses = {}
    for name, (spec, body) in CASES.items():
        query = urlencode({"spec": json.dumps(spec)})
        statuses[name] = client.post(f"/?{query}", body=body).status
    refusals = {name for name, status in statuses.items() if status != 200}
    expected = {
        name
        for name in CASES
        if name.startswith(("asset-", "bytes-over", "format-unknown", "input-"))
        or name.startswith(("too-many", "pipeline-", "sdk-"))
    }
    assert refusals == expected
