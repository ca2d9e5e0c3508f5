"""Where pixels land: `contain` pads to the box, stamps at one gravity stack."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops

from edgefn_runtime.capabilities.image import Budget, ImageFailure, render
from images import decode, encode, photo, psnr

MiB = 1024 * 1024
BACKGROUND = (30, 60, 90)
Box = tuple[int, int, int, int]


def run(
    data: bytes, ops: list[dict], assets: Path | None = None, budget: Budget | None = None
) -> Image.Image:
    pipeline = {"ops": ops, "output": {"format": "png", "background": "#ff0000"}}
    return decode(render(data, pipeline, assets, budget or Budget()).data)


def contain(width: int, height: int | None, **op: object) -> dict:
    return {"op": "resize", "width": width, "height": height, "fit": "contain", **op}


# fit=contain: exactly the box, the picture never enlarged.


def test_a_smaller_image_is_padded_to_the_box_at_its_own_size() -> None:
    source = photo(400, 300)
    padded = run(encode(source, "PNG"), [contain(500, 500, background="#ff0000")])
    assert padded.size == (500, 500)
    assert psnr(padded.crop((50, 100, 450, 400)), source) == float("inf")  # centred, as it was
    assert padded.getpixel((5, 5)) == (255, 0, 0) == padded.getpixel((494, 494))


def test_a_larger_image_is_scaled_into_the_box_then_padded() -> None:
    padded = run(encode(photo(1000, 800), "PNG"), [contain(500, 500, background="#00ff00")])
    assert padded.size == (500, 500)
    assert padded.getpixel((250, 10)) == (0, 255, 0)  # a 500x400 picture, 50 px bands
    assert padded.getpixel((250, 60)) != (0, 255, 0)


def test_gravity_places_the_padded_picture() -> None:
    source = photo(400, 300)
    padded = run(encode(source, "PNG"), [contain(500, 500, gravity="southeast")])
    assert psnr(padded.crop((100, 200, 500, 500)), source) == float("inf")


def test_padding_is_transparent_for_an_image_with_alpha() -> None:
    padded = run(encode(photo(400, 300, mode="RGBA"), "PNG"), [contain(500, 500)])
    assert padded.mode == "RGBA" and padded.size == (500, 500)
    assert padded.getpixel((5, 5))[3] == 0


def test_without_a_box_there_is_nothing_to_pad() -> None:
    data = encode(photo(400, 300), "PNG")
    assert run(data, [contain(500, None)]).size == (400, 300)
    inside = {"op": "resize", "width": 500, "height": 500, "fit": "inside"}
    assert run(data, [inside]).size == (400, 300)  # inside: the fit that never pads


def test_the_canvas_of_a_small_image_is_charged_before_it_is_made() -> None:
    budget = Budget(max_memory=64 * MiB)
    with pytest.raises(ImageFailure) as refused:
        run(encode(photo(40, 30), "PNG"), [contain(6000, 6000)], budget=budget)
    assert refused.value.kind == "memory_limit"
    assert "padding to 6000x6000" in refused.value.message


# Stamps at one gravity are laid out, not drawn over each other.


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("assets")
    Image.new("RGBA", (50, 50), (255, 0, 0, 255)).save(folder / "logo.png")
    return folder


FLAT = encode(Image.new("RGB", (600, 400), BACKGROUND), "PNG")


def text(gravity: str = "southeast", **op: object) -> dict:
    return {"op": "text", "text": "edgefn", "size": 0.06, "opacity": 1, "gravity": gravity, **op}


def logo(gravity: str = "southeast", **op: object) -> dict:
    return {"op": "overlay", "asset": "logo.png", "scale": 0.1, "gravity": gravity, **op}


def changed(ops: list[dict], assets: Path) -> Box:
    """The box of the pixels `ops` change on a flat image."""
    box = ImageChops.difference(run(FLAT, ops, assets), decode(FLAT)).getbbox()
    assert box is not None
    return box


def intersect(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("gravity", ["southeast", "south", "northwest", "center", "east"])
def test_text_and_logo_at_one_gravity_do_not_overlap(gravity: str, assets: Path) -> None:
    both = changed([logo(gravity), text(gravity)], assets)
    first = changed([logo(gravity)], assets)  # the first stamp stays where it was
    second = changed([logo(gravity, opacity=0), text(gravity)], assets)
    assert not intersect(first, second)
    assert both == (
        min(first[0], second[0]),
        min(first[1], second[1]),
        max(first[2], second[2]),
        max(first[3], second[3]),
    )


def test_stamps_stack_away_from_the_edge_in_pipeline_order(assets: Path) -> None:
    corner = changed([logo()], assets)
    second = changed([logo(opacity=0), logo()], assets)
    third = changed([logo(opacity=0), logo(opacity=0), logo()], assets)
    margin = 12  # 0.02 of 600 px
    assert corner == (528, 328, 588, 388)
    assert second == (528, 328 - 60 - margin, 588, 388 - 60 - margin)
    assert third[3] == second[1] - margin
    top = changed([logo("north", opacity=0), logo("north")], assets)
    assert top[1] == 12 + 60 + margin  # north stamps stack downwards


def test_other_gravities_and_tiles_leave_the_corner_alone(assets: Path) -> None:
    corner = changed([logo()], assets)
    assert changed([text("northwest", opacity=0), logo()], assets) == corner
    tiled = run(FLAT, [text(tile=True, opacity=0), logo()], assets)
    assert ImageChops.difference(tiled, decode(FLAT)).getbbox() == corner


def test_a_resize_starts_the_layout_over(assets: Path) -> None:
    resize = {"op": "resize", "width": 600, "height": 400, "fit": "fill"}
    corner = changed([logo()], assets)
    assert changed([logo(opacity=0), resize, logo()], assets) == corner
