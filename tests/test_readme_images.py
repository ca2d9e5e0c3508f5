"""The README's image formats are the code's: what the host decodes (one list, the
contract's INPUT_FORMATS) and what `send()` encodes."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from edgefn_contract.image import FORMATS, INPUT_FORMATS
from edgefn_runtime.capabilities.image import Budget, ImageFailure, probe, render
from gateway_process import ROOT
from images import encode, photo

README = (ROOT / "README.md").read_text()


def _names(text: str) -> tuple[str, ...]:
    """'JPEG, PNG and TIFF' or 'JPEG, PNG, TIFF' as a tuple of names."""
    return tuple(name for name in re.split(r",\s*|\s+and\s+", " ".join(text.split())) if name)


def test_the_images_section_lists_the_decoded_formats() -> None:
    found = re.search(r"Only ([A-Za-z, \n]+?) are\s+decoded\.", README)
    assert found is not None, "the Images section no longer says which formats are decoded"
    assert _names(found.group(1)) == INPUT_FORMATS


def test_the_security_section_lists_the_decoded_formats() -> None:
    found = re.search(r"formats are an\s+allow-list \(([A-Za-z, \n]+)\)", README)
    assert found is not None, "the Security section no longer lists the allowed formats"
    assert _names(found.group(1)) == INPUT_FORMATS


def test_the_send_row_lists_the_output_formats() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `.send("))
    assert tuple(re.findall(r"`(\w+)`", row.split("|")[2])[: len(FORMATS)]) == FORMATS


@pytest.mark.parametrize("fmt", INPUT_FORMATS)
def test_every_listed_format_is_decoded(fmt: str) -> None:
    data = encode(photo(40, 30), fmt.upper())
    assert probe(data).format == fmt.lower()
    rendered = render(data, {"output": {"format": "png"}}, None, Budget())
    assert rendered.width == 40


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX", "SGI", "DDS"])
def test_formats_pillow_reads_but_the_list_omits_are_refused(fmt: str) -> None:
    Image.init()
    assert fmt in Image.OPEN  # Pillow itself would decode it
    data = encode(photo(40, 30), fmt)
    with pytest.raises(ImageFailure) as refused:
        probe(data)
    assert refused.value.kind == "unsupported_image"
    assert ", ".join(INPUT_FORMATS) in refused.value.message
