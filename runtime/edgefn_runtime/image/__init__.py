"""The image capability: Pillow pipelines for guests, one host call per pipeline."""

from ._host import IMAGE_IMPORT, ImageContext, add_image_capability
from ._pipeline import FORMATS, Budget, ImageFailure, Rendered, probe, render

__all__ = [
    "FORMATS",
    "IMAGE_IMPORT",
    "Budget",
    "ImageContext",
    "ImageFailure",
    "Rendered",
    "add_image_capability",
    "probe",
    "render",
]
