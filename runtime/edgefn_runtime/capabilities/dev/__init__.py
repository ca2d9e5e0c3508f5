"""The dev runner's capability (`edgefn dev` only): a function's source folder,
read-only at `/src`, and the entry to import from it, through `edgefn:http/dev`."""

from ._host import DEV_IMPORT, SOURCE_GUEST_PATH, DevCapability, DevSource

__all__ = ["DEV_IMPORT", "SOURCE_GUEST_PATH", "DevCapability", "DevSource"]
