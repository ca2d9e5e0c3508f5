"""The request target a function is routed on: the raw path as the client sent it.

Routing must pick the function a proxy in front would pick, or an ACL there can
be walked around. Starlette's `request.url` is rebuilt from the Host header and
the *decoded* path and parsed again; and `%2e%2e` segments were routed as they
came (`/fnA/%2e%2e/fnB` served by fnA while a normalising proxy sees `/fnB`).
Here the path comes from `scope["raw_path"]`, each segment percent-decoded on
its own, the query from `scope["query_string"]`, and a path that two common
readings would route differently is refused with 400 `bad_path`:

- a dot segment (`.` or `..`, also encoded: `%2e%2e`, `%2E.`, or between encoded
  slashes or backslashes) anywhere in the path: below the route it could climb
  back over it (`/fnA/x/../../fnB`), and clients remove them before sending;
- a percent-encoded byte in the segments that select the function (`/fn%2Fx`,
  `/hell%6F`): a proxy that matches raw bytes and one that decodes first would
  disagree, and no route needs one (routes are plain ASCII);
- an empty segment or a backslash that, with slashes merged and backslashes
  read as slashes (nginx's `merge_slashes`, some CDNs), selects another function
  (`/a//b` when `/a/b` exists). Below the route, encoded slashes and empty
  segments otherwise reach the function, decoded as any ASGI app gets them (a URL
  as a path parameter is a common use).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote

from starlette.types import Scope

from ._errors import GatewayError

__all__ = ["route"]

F = TypeVar("F")
_DOT_SEGMENTS = {".", ".."}
_MERGED = re.compile(r"[/\\]+")


def route(
    scope: Scope, match: Callable[[str], tuple[F, str] | None], route_of: Callable[[F], str]
) -> tuple[F, str, str] | None:
    """The function `match` finds for `scope`'s raw path, the decoded path relative
    to its route, and the raw query string; None when no function owns the path.
    Raises 400 `bad_path` for a path that could be read as another route."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:  # optional in the ASGI spec; uvicorn always sets it
        raw = scope["path"].encode("utf-8")
    # The server's parser takes only ASCII in the request line: latin-1 cannot fail.
    # uvicorn never leaves a '?' in raw_path; other servers may.
    raw_segments = raw.decode("latin-1").split("?", 1)[0].split("/")
    segments = [unquote(segment) for segment in raw_segments]
    for segment in segments:
        if not _DOT_SEGMENTS.isdisjoint(segment.replace("\\", "/").split("/")):
            raise _bad_path("'.' and '..' segments (also encoded, as %2e) are not allowed")
    path = "/".join(segments)
    found = match(path)
    if found is None:
        return None
    function, relative = found
    prefix = route_of(function)
    covered = prefix.count("/") if prefix != "/" else 0
    if raw_segments[: covered + 1] != prefix.split("/")[: covered + 1]:
        raise _bad_path(
            f"the segments that select the function ({prefix}) must be written as is, "
            "without percent-encoding"
        )
    if "//" in path or "\\" in path:
        merged = match(_MERGED.sub("/", path))
        if merged is None or route_of(merged[0]) != prefix:
            raise _bad_path(
                "with its empty segments or backslashes read as one slash, the path "
                "would select another function"
            )
    query = scope.get("query_string", b"").decode("latin-1")
    return function, relative, query


def _bad_path(reason: str) -> GatewayError:
    return GatewayError(400, "bad_path", f"bad path: {reason}")
