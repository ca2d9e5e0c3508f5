"""edgefn's platform: builder, manifest and the `edgefn` command line."""

from .builder import BuildError, BuildResult, build
from .manifest import Manifest, ManifestError, load_manifest, parse_manifest

__all__ = [
    "BuildError",
    "BuildResult",
    "Manifest",
    "ManifestError",
    "build",
    "load_manifest",
    "parse_manifest",
]
