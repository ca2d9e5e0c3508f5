"""What an output image keeps of its input's metadata: the colour profile, and
nothing else (no EXIF, no XMP), in every output format, for every input format
that carries them."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageCms

from edgefn_runtime.capabilities.image import Budget, render
from images import encode, photo

# sRGB built by LittleCMS: a real profile, so every encoder and decoder accepts it.
PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# Distinctive values, so that their absence from the output bytes means something.
MAKER = "edgefn-metadata-test-camera"
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">edgefn-metadata-test-xmp</x:xmpmeta>'
OUTPUTS = ("jpeg", "png", "webp", "avif", "gif")
PIPELINES = {"untouched": [], "resized": [{"op": "resize", "width": 40}]}


def exif() -> bytes:
    tags = Image.Exif()
    tags[0x010F] = MAKER  # Make
    tags[0x0112] = 1  # Orientation: as stored
    return tags.tobytes()


def tagged(fmt: str) -> bytes:
    """An 80x60 photo in `fmt` carrying PROFILE, EXIF and (where Pillow writes it) XMP."""
    options: dict[str, object] = {"icc_profile": PROFILE, "exif": exif()}
    if fmt != "TIFF":  # Pillow's TIFF writer takes no xmp=
        options["xmp"] = XMP
    data = encode(photo(80, 60), fmt, **options)
    assert MAKER.encode() in data  # the input really carries them
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == PROFILE
    return data


def rendered(data: bytes, fmt: str, ops: list[dict[str, object]]) -> bytes:
    return render(data, {"ops": ops, "output": {"format": fmt}}, None, Budget()).data


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("source", ["JPEG", "PNG", "WEBP", "AVIF", "TIFF"])
def test_exif_and_xmp_are_stripped_and_the_profile_kept(
    source: str, output: str, pipeline: str
) -> None:
    data = rendered(tagged(source), output, PIPELINES[pipeline])
    assert MAKER.encode() not in data
    assert b"edgefn-metadata-test-xmp" not in data
    assert b"Exif\0\0" not in data and b"eXIf" not in data  # no EXIF block, empty or not
    image = Image.open(io.BytesIO(data))
    assert "exif" not in image.info and "xmp" not in image.info
    # GIF has no colour profile in Pillow's writer; every other format keeps it.
    assert image.info.get("icc_profile") == (None if output == "gif" else PROFILE)


@pytest.mark.parametrize("output", ["jpeg", "png", "webp", "avif"])
def test_a_profile_for_other_colours_than_the_output_is_dropped(output: str) -> None:
    # A CMYK JPEG's profile describes CMYK: the pixels leave as RGB, which it would
    # misdescribe. (The header's colour space is all that decides.)
    cmyk_profile = PROFILE[:16] + b"CMYK" + PROFILE[20:]
    data = encode(photo(80, 60).convert("CMYK"), "JPEG", icc_profile=cmyk_profile)
    image = Image.open(io.BytesIO(rendered(data, output, [])))
    assert image.mode in ("RGB", "RGBA") and "icc_profile" not in image.info


def test_a_grey_image_keeps_a_grey_profile() -> None:
    grey_profile = PROFILE[:16] + b"GRAY" + PROFILE[20:]
    data = encode(photo(80, 60, mode="L"), "PNG", icc_profile=grey_profile)
    image = Image.open(io.BytesIO(rendered(data, "png", PIPELINES["resized"])))
    assert image.mode == "L" and image.info["icc_profile"] == grey_profile


def test_an_input_without_a_profile_gets_none() -> None:
    for output in OUTPUTS:
        data = rendered(encode(photo(80, 60), "PNG"), output, [])
        assert "icc_profile" not in Image.open(io.BytesIO(data)).info, output
