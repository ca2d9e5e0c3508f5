"""The image capability: Pillow pipelines for guests, one host call per pipeline."""

from ._budget import Budget, ImageFailure
from ._codecs import FORMATS, Rendered, probe
from ._host import IMAGE_IMPORT, MAX_SOURCE_BYTES, ImageContext, add_image_capability
from ._pipeline import render

__all__ = [
    "FORMATS",
    "IMAGE_IMPORT",
    "MAX_SOURCE_BYTES",
    "Budget",
    "ImageContext",
    "ImageFailure",
    "Rendered",
    "add_image_capability",
    "probe",
    "render",
]
