"""Streamed request bodies' vocabulary: what the WIT `request-stream` interface's
values mean."""

from __future__ import annotations

__all__ = ["READ_MAX", "REQUEST_FILE", "STREAMED"]

# The `request-body` length that says "not here: read it with `request-stream`".
# No body can be that long, and a new case in the variant would have changed
# `handle`'s type, which every component built before checks against.
STREAMED = 2**64 - 1

# The file the host writes each chunk of a streamed request body to, read-only
# for the guest: a `list<u8>` would cross the boundary one element at a time.
REQUEST_FILE = "/.edgefn/request"

# The most one `read` asks for: what the guest and the host's file hold at once.
READ_MAX = 1 << 20
