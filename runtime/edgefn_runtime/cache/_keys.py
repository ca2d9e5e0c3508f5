"""Cache keys: what makes two requests the same request to a cache.

A key is a digest of its parts, each part length-prefixed so no two lists of
parts give the same text (`a|b` + `c` against `a` + `b|c`). The caller's
namespace comes first: the gateway's is the function's identity and active
version, the outbound capability's the function fetching, so no function can
ever read or write another's entries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, urlencode

from edgefn_contract.image import FORMATS, negotiate

__all__ = ["key", "normalise_query", "variant_key"]

_SPACES = re.compile(r"\s*,\s*|\s+")


def key(*parts: str) -> str:
    """The key of these parts, in this order."""
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()


def normalise_query(query: str) -> str:
    """The query with its parameters sorted by name (the order of a repeated
    name's values kept: it can mean something) and encoded one way, so that
    `?w=800&format=webp` and `?format=webp&w=800` are one entry."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]))


def variant_key(
    base: str, vary: Sequence[str], headers: Iterable[tuple[str, str]], image: bool
) -> str:
    """The key of the response stored under `base` for these request headers,
    `vary` naming the headers it varies on.

    For an image (`image`: the stored response's Content-Type is image/*),
    `Accept` counts only through the format `edgefn.image.negotiate` picks
    from it, for each fallback a function may give: Chrome's, Firefox's and
    Safari's headers then share the AVIF entry and curl's `*/*` gets the
    fallback's, instead of one entry per browser version's exact header. A
    function that answers an image's `Accept` by other rules than the SDK's
    should not send `Vary: Accept` with image types."""
    values: dict[str, list[str]] = {name: [] for name in vary}
    for name, value in headers:
        found = values.get(name.lower())
        if found is not None:
            found.append(value)
    parts = [base]
    for name in vary:
        joined = ",".join(values[name])
        if image and name == "accept":
            part = ",".join(negotiate(joined, fallback) for fallback in FORMATS)
        else:
            part = _SPACES.sub(lambda m: "," if "," in m.group() else " ", joined.strip()).lower()
        parts += [name, part]
    return key(*parts)
