"""The image capability: Pillow pipelines for guests, one host call per pipeline."""

from ._budget import Budget, ImageFailure
from ._codecs import FORMATS, Rendered, probe
from ._host import ImageCapability, NativeImages, native_backend
from ._pipeline import render

__all__ = [
    "FORMATS",
    "Budget",
    "ImageCapability",
    "ImageFailure",
    "NativeImages",
    "Rendered",
    "native_backend",
    "probe",
    "render",
]
