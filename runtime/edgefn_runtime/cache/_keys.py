"""Cache keys: what makes two requests the same request to a cache.

A key is a digest of its parts, each part prefixed with its length so no two
lists of parts give the same text (`a|b` + `c` against `a` + `b|c`). The caller's
namespace comes first: the gateway's is the function's identity and active
version, the outbound capability's the function fetching, so no function can
ever read or write another's entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, urlencode

from edgefn_contract.image import FORMATS, negotiate

__all__ = ["key", "normalise_query", "variant_key"]


def key(*parts: str) -> str:
    """The key of these parts, in this order."""
    text = "".join(f"{len(part)}:{part}" for part in parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def normalise_query(query: str) -> str:
    """The query with its parameters sorted by name (the order of a repeated
    name's values kept: it can mean something) and encoded one way, so that
    `?w=800&format=webp` and `?format=webp&w=800` are one entry."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]))


def variant_key(
    base: str, vary: Sequence[str], headers: Iterable[tuple[str, str]], negotiated: bool
) -> str:
    """The key of the response stored under `base` for these request headers,
    `vary` naming the headers it varies on.

    `negotiated` (the function said it chose its format with
    `edgefn.image.negotiate`): `Accept` counts only through the format that
    picks from it, for each fallback a function may give, so Chrome's,
    Firefox's and Safari's headers share the AVIF entry and curl's `*/*` gets
    the fallback's, instead of one entry per browser version's exact header.
    Other values count as sent, less surrounding whitespace (not lower-cased:
    `Origin`, cookies and tokens are case-sensitive)."""
    values: dict[str, list[str]] = {name: [] for name in vary}
    for name, value in headers:
        found = values.get(name.lower())
        if found is not None:
            found.append(value)
    parts = [base]
    for name in vary:
        joined = ",".join(values[name])
        if negotiated and name == "accept":
            part = ",".join(negotiate(joined, fallback) for fallback in FORMATS)
        else:
            part = joined.strip()
        parts += [name, part]
    return key(*parts)
