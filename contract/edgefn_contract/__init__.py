"""What an edgefn guest and its host must agree on, importable by both.

The SDK (`edgefn`, inside components and natively) and the host runtime
(`edgefn_runtime`) each import this package and never each other. It is pure
Python with no dependencies, because `edgefn build` compiles it into every
component beside the SDK.
"""

CONTRACT_VERSION = "0.6.0"
"""The version of the WIT package `edgefn:http` both sides speak."""

__all__ = ["CONTRACT_VERSION"]
