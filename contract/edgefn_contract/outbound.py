"""Outbound HTTP's vocabulary: what the WIT `outbound` interface's values mean."""

from __future__ import annotations

__all__ = ["FAILURE_KINDS", "FETCH_FILE", "IMAGE_FAILURE_PREFIX", "METHODS", "STATUSES"]

# The file the host writes each fetched response body to, read-only for the
# guest: a `list<u8>` would cross the boundary one element at a time.
FETCH_FILE = "/.edgefn/fetch"

# Methods a function may send; CONNECT and TRACE would turn the host into a
# tunnel or echo the host's own headers back.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# The WIT `failure.kind` values, and what each answers when the function does
# not catch it: (HTTP status, stable error code).
STATUSES: dict[str, tuple[int, str]] = {
    # The manifest or the operator's policy refuses the URL: the function's bug.
    "not_allowed": (500, "outbound_not_allowed"),
    "timeout": (504, "outbound_timeout"),
    "too_large": (502, "outbound_too_large"),
    # DNS, connect, TLS, an invalid answer, too many redirects.
    "failed": (502, "outbound_failed"),
}
FAILURE_KINDS = tuple(STATUSES)

# An image `url` source's outbound failure reaches the guest as an image
# failure of kind "outbound_" + kind.
IMAGE_FAILURE_PREFIX = "outbound_"
