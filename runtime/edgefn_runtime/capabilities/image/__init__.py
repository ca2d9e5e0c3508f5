"""The image capability: Pillow pipelines for guests, one host call per pipeline."""

from ._budget import Budget, ImageFailure
from ._codecs import FORMATS, Rendered, probe
from ._host import (
    IMAGE_IMPORT,
    MAX_SOURCE_BYTES,
    ImageCapability,
    NativeImages,
    native_backend,
    probe_source,
    render_source,
)
from ._pipeline import render

__all__ = [
    "FORMATS",
    "IMAGE_IMPORT",
    "MAX_SOURCE_BYTES",
    "Budget",
    "ImageCapability",
    "ImageFailure",
    "NativeImages",
    "Rendered",
    "native_backend",
    "probe",
    "probe_source",
    "render",
    "render_source",
]
