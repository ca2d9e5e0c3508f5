"""Request ids: the client's when it is a plain, short token, else a new one.

The id goes into every access line, function log line and error body, and
`edgefn logs` prints it: a client's id of 64 KiB, or with escape sequences or
newlines, would reach the operator's terminal and log pipeline as it was sent.
"""

from __future__ import annotations

import random
import re

__all__ = ["MAX_REQUEST_ID", "request_id"]

MAX_REQUEST_ID = 64
# UUIDs, hex, ULIDs, cf-ray style ids (`8a1b...-LHR`) and `host:counter` ids fit.
_ACCEPTED = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID}}}")


def request_id(given: str | None) -> str:
    """`given` (a client's `X-Request-Id`) if it is acceptable, else a new id."""
    if given is not None and _ACCEPTED.fullmatch(given):
        return given
    # Unique, not secret: uuid4() reads the OS's random source on every call.
    return f"{random.getrandbits(128):032x}"
