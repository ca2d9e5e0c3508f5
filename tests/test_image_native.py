"""The image capability's native backend (what `edgefn.testing` runs through the
`edgefn.testing:image` entry point) makes the sandbox's checks, not fewer."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from edgefn import HTTPError
from edgefn.image import raise_failure
from edgefn_runtime import FuelExhausted, Limits
from edgefn_runtime.capabilities.image import ImageFailure, NativeImages, native_backend
from images import encode, photo, png_bomb

SOURCE = encode(photo(60, 40), "PNG")
RESIZE = json.dumps({"ops": [{"op": "resize", "width": 30}], "output": {"format": "png"}})


def test_the_entry_point_names_the_native_backend() -> None:
    (entry,) = entry_points(group="edgefn.testing", name="image")
    assert entry.load() is native_backend


def test_the_native_backend_renders_and_counts_pixels() -> None:
    backend = native_backend(body=SOURCE, assets=None)
    rendered = backend.render(("body", None), RESIZE)
    assert (rendered.width, rendered.height, rendered.content_type) == (30, 20, "image/png")
    assert backend.probe(("bytes", SOURCE)).width == 60
    assert backend.pixels > 0


def test_an_asset_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "secret.png").write_bytes(SOURCE)
    backend = native_backend(body=b"", assets=tmp_path / "assets")
    with pytest.raises(ImageFailure, match="no asset named '../secret.png'") as caught:
        backend.probe(("asset", "../secret.png"))
    assert caught.value.kind == "invalid_pipeline"


def test_assets_without_an_assets_folder_are_refused() -> None:
    with pytest.raises(ImageFailure, match="the function has no assets"):
        native_backend(body=b"", assets=None).probe(("asset", "logo.png"))


def test_a_bytes_source_over_64_kib_is_refused() -> None:
    with pytest.raises(ImageFailure, match="bytes sources are limited to 64 KiB") as caught:
        native_backend(body=b"", assets=None).probe(("bytes", b"\0" * (64 * 1024 + 1)))
    assert caught.value.kind == "invalid_pipeline"


def test_a_pixel_bomb_is_refused_by_the_default_limits() -> None:
    with pytest.raises(ImageFailure) as caught:
        native_backend(body=png_bomb(), assets=None).render(("body", None), RESIZE)
    assert caught.value.kind == "image_too_large"


def test_garbage_is_an_invalid_image_not_a_crash() -> None:
    with pytest.raises(ImageFailure) as caught:
        native_backend(body=b"not an image", assets=None).render(("body", None), RESIZE)
    assert caught.value.kind in {"invalid_image", "unsupported_image"}


def test_a_fuel_breach_is_recorded_and_stops_later_work() -> None:
    backend = NativeImages(SOURCE, None, Limits(fuel=150_000))
    backend.probe(("body", None))  # 100,000 + the bytes hashed
    with pytest.raises(ImageFailure) as caught:
        backend.probe(("body", None))
    assert caught.value.kind == "budget_exceeded"
    assert isinstance(backend.breach, FuelExhausted)
    with pytest.raises(ImageFailure, match="needs more fuel than is left"):
        backend.render(("body", None), RESIZE)


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("budget_exceeded", 503, "fuel_exhausted"), ("memory_limit", 503, "memory_limit")],
)
def test_a_stopping_failure_reaches_a_native_test_as_the_sandbox_answers_it(
    kind: str, status: int, code: str
) -> None:
    with pytest.raises(HTTPError) as caught:
        raise_failure(kind, "out of it")
    assert (caught.value.status, caught.value.code) == (status, code)
