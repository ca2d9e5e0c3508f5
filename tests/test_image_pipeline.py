"""The host image pipeline against Pillow itself: sizes, pixels, formats, bad input."""

from __future__ import annotations

import time

import pytest
from PIL import Image, ImageOps

from edgefn_runtime.capabilities.image import Budget, ImageFailure, probe, render
from images import (
    animated_gif,
    decode,
    encode,
    jpeg_with_orientation,
    jpeg_with_repeated_scans,
    noise,
    photo,
    png_bomb,
    png_with_text,
    psnr,
    tiled_tiff,
)

SOURCE = encode(photo(600, 400), "PNG")


def run(ops: list[dict], data: bytes = SOURCE, fmt: str = "png", **output: object) -> Image.Image:
    rendered = render(data, {"ops": ops, "output": {"format": fmt, **output}}, None, Budget())
    image = decode(rendered.data)
    assert (rendered.width, rendered.height) == image.size
    return image


@pytest.mark.parametrize(
    ("fit", "size"),
    [
        ("cover", (300, 300)),
        ("contain", (300, 300)),
        ("fill", (300, 300)),
        ("inside", (300, 200)),
        ("outside", (450, 300)),
    ],
)
def test_fit_modes_give_exact_sizes(fit: str, size: tuple[int, int]) -> None:
    assert run([{"op": "resize", "width": 300, "height": 300, "fit": fit}]).size == size


def test_one_dimension_keeps_the_aspect_ratio() -> None:
    assert run([{"op": "resize", "width": 150}]).size == (150, 100)
    assert run([{"op": "resize", "height": 100}]).size == (150, 100)


def test_no_upscaling_unless_asked() -> None:
    assert run([{"op": "resize", "width": 1200}]).size == (600, 400)
    assert run([{"op": "resize", "width": 1200, "upscale": True}]).size == (1200, 800)


def test_resize_matches_pillow_exactly_when_lossless() -> None:
    expected = photo(600, 400).resize((300, 200), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert psnr(run([{"op": "resize", "width": 300, "fit": "inside"}]), expected) == float("inf")


def test_cover_crops_by_gravity() -> None:
    scaled = photo(600, 400).resize((450, 300), Image.Resampling.LANCZOS, reducing_gap=3.0)
    west = run([{"op": "resize", "width": 300, "height": 300, "fit": "cover", "gravity": "west"}])
    assert psnr(west, scaled.crop((0, 0, 300, 300))) == float("inf")


def test_contain_pads_with_the_background() -> None:
    image = run(
        [{"op": "resize", "width": 300, "height": 300, "fit": "contain", "background": "#ff0000"}]
    )
    assert image.getpixel((150, 5)) == (255, 0, 0)  # the padding above the picture


@pytest.mark.parametrize("gravity", ["northwest", "center", "southeast"])
def test_crop_by_gravity_and_box(gravity: str) -> None:
    source = photo(600, 400)
    boxes = {"northwest": (0, 0), "center": (250, 150), "southeast": (500, 300)}
    left, top = boxes[gravity]
    cropped = run([{"op": "crop", "width": 100, "height": 100, "gravity": gravity}])
    assert psnr(cropped, source.crop((left, top, left + 100, top + 100))) == float("inf")
    boxed = run([{"op": "crop", "left": 10, "top": 20, "width": 50, "height": 60}])
    assert psnr(boxed, source.crop((10, 20, 60, 80))) == float("inf")


def test_rotate_and_flip() -> None:
    source = photo(600, 400)
    rotated = run([{"op": "rotate", "degrees": 90}])
    assert psnr(rotated, source.transpose(Image.Transpose.ROTATE_270)) == float("inf")
    flipped = run([{"op": "flip", "direction": "vertical"}])
    assert psnr(flipped, source.transpose(Image.Transpose.FLIP_TOP_BOTTOM)) == float("inf")


def test_exif_orientation_is_applied_by_default() -> None:
    data = jpeg_with_orientation(6)
    assert probe(data).orientation == 6
    assert run([], data).size == (200, 400)
    assert (
        render(data, {"auto_orient": False, "output": {"format": "png"}}, None, Budget()).width
        == 400
    )


def test_jpeg_draft_decoding_stays_close_to_a_full_decode() -> None:
    source = photo(2400, 1600)
    data = encode(source, "JPEG", quality=95)
    fast = run([{"op": "resize", "width": 600}], data)
    full = decode(data).resize((600, 400), Image.Resampling.LANCZOS)
    assert psnr(fast, full) >= 40


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "avif", "gif"])
def test_every_output_format(fmt: str) -> None:
    rendered = render(
        SOURCE,
        {"ops": [{"op": "resize", "width": 200}], "output": {"format": fmt, "quality": 90}},
        None,
        Budget(),
    )
    image = decode(rendered.data)
    assert (
        image.format
        == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}[fmt]
    )
    assert rendered.content_type == f"image/{fmt}"
    assert image.size == (200, 133)
    if fmt in ("jpeg", "webp", "avif"):
        reference = photo(600, 400).resize((200, 133), Image.Resampling.LANCZOS)
        assert psnr(image, reference) >= 30  # lossy, but the same picture


def test_metadata_is_stripped() -> None:
    out = render(jpeg_with_orientation(6), {"output": {"format": "jpeg"}}, None, Budget())
    assert decode(out.data).getexif().get(0x0112) is None


def test_transparency_is_flattened_onto_the_background_for_jpeg() -> None:
    data = encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG")
    image = run([], data, "jpeg", background="#00ff00", quality=100)
    assert image.getpixel((5, 5)) == pytest.approx((0, 255, 0), abs=3)
    assert run([], encode(photo(60, 40, "RGBA"), "PNG"), "png").mode == "RGBA"


@pytest.mark.parametrize(
    "data",
    [
        encode(photo(120, 80).convert("CMYK"), "JPEG"),
        encode(photo(120, 80).convert("P"), "PNG"),
        encode(photo(120, 80).convert("LA"), "PNG"),
        encode(photo(120, 80).convert("I;16"), "PNG"),
    ],
    ids=["cmyk-jpeg", "palette-png", "la-png", "16bit-png"],
)
def test_unusual_modes_decode(data: bytes) -> None:
    assert run([{"op": "resize", "width": 60}], data, "jpeg").size == (60, 40)


def test_animated_gif_is_probed_and_its_first_frame_used() -> None:
    data = animated_gif()
    assert probe(data).animated is True
    first = decode(data).convert("RGB")
    assert psnr(run([], data, "png"), first) == float("inf")


def test_text_watermark_changes_only_its_corner() -> None:
    stamped = run(
        [
            {
                "op": "text",
                "text": "edgefn",
                "size": 0.1,
                "opacity": 1.0,
                "gravity": "southeast",
                "margin": 0.02,
            }
        ]
    )
    original = photo(600, 400)
    assert psnr(stamped.crop((0, 0, 300, 200)), original.crop((0, 0, 300, 200))) == float("inf")
    assert psnr(stamped.crop((400, 300, 600, 400)), original.crop((400, 300, 600, 400))) < 30


def test_tiled_text_covers_the_image() -> None:
    stamped = run([{"op": "text", "text": "x", "size": 0.05, "opacity": 1.0, "tile": True}])
    original = photo(600, 400)
    for box in ((0, 0, 150, 100), (450, 300, 600, 400)):
        assert psnr(stamped.crop(box), original.crop(box)) < 40


def test_probe_reads_the_header_only() -> None:
    info = probe(SOURCE)
    assert (info.width, info.height, info.format, info.animated) == (600, 400, "png", False)
    assert len(info.digest) == 64


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"definitely not an image", "unsupported_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "unsupported_image"),
        (encode(photo(300, 200), "JPEG")[:2000], "invalid_image"),
        (encode(photo(300, 200), "PNG")[:3000], "invalid_image"),
    ],
    ids=["garbage", "eps", "truncated-jpeg", "truncated-png"],
)
def test_bad_input_is_classified(data: bytes, kind: str) -> None:
    with pytest.raises(ImageFailure) as caught:
        run([{"op": "resize", "width": 100}], data)
    assert caught.value.kind == kind


def test_decompression_bomb_is_refused_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(ImageFailure) as caught:
        run([], png_bomb())
    assert caught.value.kind == "image_too_large"
    assert "10000000000 pixels" in caught.value.message
    assert time.perf_counter() - started < 0.5


def test_budgets_are_enforced() -> None:
    with pytest.raises(ImageFailure) as caught:
        render(SOURCE, {"output": {}}, None, Budget(max_pixels=1000))
    assert caught.value.kind == "image_too_large"
    with pytest.raises(ImageFailure) as caught:
        render(SOURCE, {"output": {}}, None, Budget(max_memory=1000))
    assert caught.value.kind == "memory_limit"

    def broke(fuel: int) -> None:
        raise ImageFailure("budget_exceeded", "out of fuel")

    with pytest.raises(ImageFailure, match="out of fuel"):
        render(SOURCE, {"output": {}}, None, Budget(spend=broke))


@pytest.mark.parametrize(
    "pipeline",
    [
        {"output": {"format": "bmp"}},
        {"ops": [{"op": "swirl"}], "output": {}},
        {"ops": [{"op": "resize", "width": 10, "fit": "squash"}], "output": {}},
        {"ops": [{"op": "rotate", "degrees": 45}], "output": {}},
        {"output": {"quality": 0}},
    ],
)
def test_invalid_pipelines_are_refused(pipeline: dict) -> None:
    with pytest.raises(ImageFailure) as caught:
        render(SOURCE, pipeline, None, Budget())
    assert caught.value.kind == "invalid_pipeline"


def test_exif_transpose_reference() -> None:
    data = jpeg_with_orientation(6)
    expected = ImageOps.exif_transpose(decode(data))
    assert psnr(run([], data, "png"), expected) == float("inf")


MiB = 2**20


def _flat_png(width: int, height: int, mode: str = "RGB") -> bytes:
    return encode(Image.new(mode, (width, height)), "PNG")


def _refused(data: bytes, pipeline: dict, budget: Budget) -> ImageFailure:
    with pytest.raises(ImageFailure) as caught:
        render(data, pipeline, None, budget)
    assert budget.peak <= budget.max_memory
    return caught.value


def test_pixels_are_counted_as_pillow_stores_them() -> None:
    # 3000 x 3000 RGB is 36 MB in Pillow (4 bytes a pixel), not 27 MB.
    budget = Budget(max_memory=30 * MiB)
    failure = _refused(_flat_png(3000, 3000), {"output": {"format": "png"}}, budget)
    assert failure.kind == "memory_limit"
    assert "decoding the 3000x3000 image" in failure.message


def test_the_letterbox_canvas_is_charged_before_it_is_made() -> None:
    pipeline = {"ops": [{"op": "resize", "width": 6000, "height": 6000, "fit": "contain"}]}
    failure = _refused(_flat_png(6000, 1, "RGBA"), pipeline, Budget(max_memory=128 * MiB))
    assert failure.kind == "memory_limit"
    assert "padding to 6000x6000" in failure.message


def test_a_padded_result_over_the_pixel_limit_is_too_large() -> None:
    pipeline = {"ops": [{"op": "resize", "width": 16384, "height": 16384}]}
    failure = _refused(_flat_png(16384, 1), pipeline, Budget())
    assert failure.kind == "image_too_large"
    assert "the padded image would be 16384x16384" in failure.message


def test_the_text_mask_is_charged_before_it_is_drawn() -> None:
    pipeline = {"ops": [{"op": "text", "text": "W" * 200, "size": 0.5}], "output": {}}
    failure = _refused(_flat_png(4000, 1), pipeline, Budget(max_memory=128 * MiB))
    assert failure.kind == "memory_limit"
    assert "drawing the text at 1000 px" in failure.message  # the font size is capped


def test_sixteen_bit_images_are_narrowed_within_the_budget() -> None:
    data = encode(Image.new("I;16", (4000, 4000), 1000), "PNG")  # 32 MB as stored
    failure = _refused(data, {"output": {}}, Budget(max_memory=64 * MiB))
    assert failure.kind == "memory_limit"
    assert "converting to 8 bits" in failure.message
    assert run([], data).mode == "L"  # and without a tight budget it works


def test_transparency_flattening_is_charged() -> None:
    data = _flat_png(2000, 2000, "RGBA")  # 16 MB decoded
    failure = _refused(data, {"output": {"format": "jpeg"}}, Budget(max_memory=32 * MiB))
    assert failure.kind == "memory_limit"
    assert "flattening transparency" in failure.message


@pytest.mark.parametrize(
    ("op", "message"),
    [
        ({"op": "text", "text": ".", "size": 0.01, "margin": 0, "tile": True}, "at most 10,000"),
        ({"op": "text", "text": "x", "margin": 0.9}, "margin must be"),
        ({"op": "text", "text": "x", "size": 2}, "size must be"),
    ],
)
def test_stamps_are_capped(op: dict, message: str) -> None:
    failure = _refused(_flat_png(3000, 3000), {"ops": [op], "output": {}}, Budget())
    assert failure.kind == "invalid_pipeline"
    assert message in failure.message


def test_encoders_are_priced_by_what_they_cost() -> None:
    spent: dict[str, int] = {}
    for fmt in ("jpeg", "avif"):
        fuel: list[int] = []
        render(SOURCE, {"output": {"format": fmt}}, None, Budget(spend=fuel.append))
        spent[fmt] = fuel[-1]  # the encode is the last step
    assert spent["avif"] > 50 * spent["jpeg"]


def test_work_that_would_outlast_the_deadline_is_refused_before_it_starts() -> None:
    data = encode(noise(1000, 1000), "PNG", compress_level=1)
    budget = Budget(deadline=time.monotonic() + 0.5)
    started = time.perf_counter()
    failure = _refused(data, {"output": {"format": "avif"}}, budget)
    assert failure.kind == "timeout"
    assert "encoding 1000x1000 as avif would take about 2.3 s" in failure.message
    assert time.perf_counter() - started < 0.5


def test_the_encoder_stops_at_the_response_limit() -> None:
    data = encode(noise(500, 500), "PNG", compress_level=1)
    failure = _refused(data, {"output": {"format": "png"}}, Budget(max_output_bytes=10_000))
    assert failure.kind == "response_too_large"


def test_pillows_own_bomb_guard_is_on() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None


def test_repeated_jpeg_scans_are_refused_and_scans_are_charged() -> None:
    # 5,000 repeats of one scan in 436 KB took 18 s of host CPU, charged 0.01 s.
    failure = _refused(jpeg_with_repeated_scans(200), {"output": {}}, Budget())
    assert failure.kind == "invalid_image" and "scans" in failure.message
    fuel: list[int] = []
    data = jpeg_with_repeated_scans(1, 1000)
    render(data, {"ops": [{"op": "resize", "width": 100}]}, None, Budget(spend=fuel.append))
    assert fuel[0] >= 1000 * 1000 * data.count(b"\xff\xda") * 2  # full size, every scan


def test_a_tiff_tile_larger_than_its_image_is_charged() -> None:
    # A 16x16 image in one 8192x8192 tile: libtiff inflated 196 MiB for it.
    failure = _refused(tiled_tiff(16, 16, 8192), {"output": {}}, Budget(max_memory=128 * MiB))
    assert failure.kind == "memory_limit"


def test_png_text_is_bounded_when_the_header_is_read() -> None:
    with pytest.raises(ImageFailure) as caught:
        probe(png_with_text(8))  # 8 MiB of text in a few KB; Pillow allowed 64 MiB
    assert caught.value.kind == "invalid_image"


def test_a_converted_palette_image_is_held_at_its_new_size() -> None:
    data = encode(Image.new("P", (5000, 5000)), "PNG", transparency=0)  # 25 MB as P
    budget = Budget(max_memory=128 * MiB)
    failure = _refused(data, {"ops": [{"op": "resize", "width": 100}]}, budget)
    # Held as RGBA (100 MB), the resize's copies cannot fit; counted as P they did.
    assert failure.kind == "memory_limit" and "resizing" in failure.message
