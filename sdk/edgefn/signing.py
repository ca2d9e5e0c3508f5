"""Signed URLs: HMAC-SHA256 over the method, the public path and the query.

>>> from edgefn import signing
>>> signing.sign_url(KEY_HEX, "GET", "/image_resize/sample.jpg?w=120", expires=1767225600)
'/image_resize/sample.jpg?w=120&exp=1767225600&sig=...'
>>> @app.get("/sample.jpg")
... def sample(request):
...     signing.verify(request, os.environ["SIGNING_KEY"])   # 403 unless signed
...     ...

What is signed is three lines joined by "\\n" (no trailing newline):

    GET
    /image_resize/sample.jpg
    exp=1767225600&format=png&w=120

- the method, upper case (a HEAD request is checked as GET);
- the path as the client requests it, route included, percent-decoded and encoded
  again so that only letters, digits, `-._~` and `/` stay as they are (an
  ordinary path is its own canonical form);
- every query parameter except `sig`, `exp` included, each name and value
  percent-decoded (`+` is a space) and encoded again by the same rule (`/`
  encoded too), as `name=value`, sorted, joined by `&`.

`sig` is the lowercase hex HMAC-SHA256 of that text with the key. The key is
given as hex (at least 16 bytes: `openssl rand -hex 32` makes a good one).
`exp`, optional, is a unix time in seconds after which the URL answers 403
`signature_expired`; it is signed like any other parameter.

The function verifies what it was given: the route prefix comes from the
`x-edgefn-route` header the gateway sets, and the method, path and query from
the request itself, so a signature made for one route, one method or one set
of parameters does not verify for another.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from ._exceptions import HTTPError
from ._requests import Request

__all__ = [
    "EXP",
    "MIN_KEY_BYTES",
    "PARAMS",
    "SIG",
    "parse_key",
    "sign_url",
    "signature",
    "string_to_sign",
    "verify",
]

SIG = "sig"
EXP = "exp"
PARAMS = (SIG, EXP)
MIN_KEY_BYTES = 16
_ROUTE_HEADER = "x-edgefn-route"
_MAX_EXP_DIGITS = 12  # unix seconds until the year 33658: longer is not a time


def parse_key(key: str | bytes) -> bytes:
    """The HMAC key: `bytes` are used as they are, a `str` is read as hex."""
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key.strip())
        except ValueError:
            raise ValueError(
                "a signing key must be hex digits (make one with `openssl rand -hex 32`)"
            ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"a signing key must be at least {MIN_KEY_BYTES} bytes ({2 * MIN_KEY_BYTES} hex "
            f"digits), got {len(key)}; make one with `openssl rand -hex 32`"
        )
    return key


def string_to_sign(method: str, url: str) -> str:
    """The text signed for a request of `method` to `url` (a path or a full URL)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    return _string_to_sign(method, unquote(parts.path) or "/", pairs)


def signature(key: str | bytes, method: str, url: str) -> str:
    """The `sig` value for a request of `method` to `url` (any `sig` in it is ignored)."""
    return _sign(parse_key(key), string_to_sign(method, url))


def sign_url(key: str | bytes, method: str, url: str, *, expires: int | None = None) -> str:
    """`url` with `exp` (when `expires`, unix seconds, is given) and `sig` appended.

    Any `sig` already in `url`, and any `exp` when `expires` is given, is
    replaced; the rest of the URL is kept as written.
    """
    parts = urlsplit(url)
    dropped = PARAMS if expires is not None else (SIG,)
    kept = [p for p in parts.query.split("&") if p and _name(p) not in dropped]
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, int) or expires < 0:
            raise ValueError(f"expires must be unix seconds (an int >= 0), got {expires!r}")
        kept.append(f"{EXP}={expires}")
    unsigned = urlunsplit(parts._replace(query="&".join(kept)))
    sig = signature(key, method, unsigned)
    return urlunsplit(parts._replace(query="&".join([*kept, f"{SIG}={sig}"])))


def verify(request: Request, key: str | bytes, *, now: float | None = None) -> int | None:
    """Raise a 403 `HTTPError` unless `request` carries a valid, unexpired signature.

    Returns the signed expiry (unix seconds), or None when the URL has none.
    Codes: `missing_signature`, `invalid_signature`, `signature_expired`, and
    400 `invalid_expiry` for a signed `exp` that is not a time; an invalid key
    is the function's fault: 500 `invalid_signing_key`.
    """
    try:
        secret = parse_key(key)
    except ValueError as exc:
        raise HTTPError(500, f"the function's {exc}", code="invalid_signing_key") from None
    given = request.query.getlist(SIG)
    if not given:
        raise HTTPError(403, "this URL must be signed: sig is missing", code="missing_signature")
    pairs = request.query.multi_items()
    # The gateway appends its own route header after the client's headers, so the
    # last value is the gateway's even where client `x-edgefn-*` headers get through.
    routes = request.headers.getlist(_ROUTE_HEADER)
    route = routes[-1] if routes else ""
    paths = [route + request.path]
    if request.path == "/" and route:
        paths.append(route)  # `/fn` and `/fn/` both reach the function as "/"
    # HEAD is GET without the body (the router serves it from GET routes): no more to give.
    method = "GET" if request.method == "HEAD" else request.method
    expected = [_sign(secret, _string_to_sign(method, p, pairs)) for p in paths]
    # Non-ASCII text would make compare_digest raise: compare bytes.
    offered = given[0].lower().encode("utf-8", "replace")
    matched = [hmac.compare_digest(e.encode(), offered) for e in expected]
    if len(given) != 1 or not any(matched):
        raise HTTPError(
            403,
            "the signature (sig) does not match this method, path and query",
            code="invalid_signature",
        )
    return _check_expiry(request.query.getlist(EXP), time.time() if now is None else now)


def _check_expiry(values: list[str], now: float) -> int | None:
    if not values:
        return None
    raw = values[0]
    if len(values) != 1 or not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_EXP_DIGITS:
        raise HTTPError(
            400, f"exp must be given once, as unix seconds, got {values!r}", code="invalid_expiry"
        )
    expires = int(raw)
    if now > expires:
        raise HTTPError(
            403,
            f"this signed URL expired {now - expires:.0f} s ago (exp={expires})",
            code="signature_expired",
        )
    return expires


def _string_to_sign(method: str, path: str, pairs: list[tuple[str, str]]) -> str:
    query = sorted(f"{_encode(k)}={_encode(v)}" for k, v in pairs if k != SIG)
    return f"{method.upper()}\n{quote(path, safe='/')}\n{'&'.join(query)}"


def _encode(text: str) -> str:
    return quote(text, safe="")


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _name(pair: str) -> str:
    return unquote(pair.partition("=")[0].replace("+", " "))
