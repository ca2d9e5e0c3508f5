"""Outbound HTTP: `fetch` from the hosts the function's manifest allows.

>>> from edgefn import fetch
>>> @app.get("/price/{sku}")
... def price(request):
...     answer = fetch(f"https://api.example.com/prices/{request.path_params['sku']}", timeout=2)
...     return answer.json() if answer.ok else {"price": None}

The host sends the request, under the manifest's `allowed_outbound_hosts` and
the operator's outbound policy; bodies cross the component boundary out of
band, like the handler's. Natively (`edgefn.testing`) the test answers it:
`TestClient(app, fetch={url: answer})`, never the network.
"""

from __future__ import annotations

import json as _json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, Protocol
from urllib.parse import urlsplit

# The vocabulary is the contract's, shared with the host.
from edgefn_contract.outbound import METHODS, STATUSES

from ._datastructures import Headers, _MultiDict
from ._exceptions import HTTPError
from ._requests import _charset

__all__ = [
    "METHODS",
    "Backend",
    "FetchRequest",
    "FetchResponse",
    "OutboundError",
    "OutboundFailed",
    "OutboundNotAllowed",
    "OutboundTimeout",
    "OutboundTooLarge",
    "fetch",
    "raise_failure",
    "timeout_ms",
    "use_backend",
]


class OutboundError(HTTPError):
    """A fetch the host refused or could not complete.

    Uncaught, it answers with the status and code of its `kind`
    (`edgefn_contract.outbound.STATUSES`), e.g. 502 `outbound_failed`.
    """

    kind: ClassVar[str] = "failed"

    def __init__(self, message: str) -> None:
        status, code = STATUSES[self.kind]
        super().__init__(status, message, code=code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class OutboundNotAllowed(OutboundError):
    """The manifest does not declare the host, or the operator blocks its network."""

    kind = "not_allowed"


class OutboundTimeout(OutboundError):
    """The fetch did not finish within its timeout or the request's deadline."""

    kind = "timeout"


class OutboundTooLarge(OutboundError):
    """The answer was larger than the operator's per-fetch or per-request byte cap."""

    kind = "too_large"


class OutboundFailed(OutboundError):
    """DNS, connect, TLS, an invalid answer or too many redirects."""

    kind = "failed"


_ERRORS: dict[str, type[OutboundError]] = {
    error.kind: error
    for error in (OutboundNotAllowed, OutboundTimeout, OutboundTooLarge, OutboundFailed)
}


def raise_failure(kind: str, message: str) -> NoReturn:
    """Raise the SDK exception for a failure `kind` reported by the host."""
    # A kind this SDK does not know yet (a newer host) is still a failed fetch.
    raise _ERRORS.get(kind, OutboundFailed)(message)


class FetchResponse:
    """What the origin answered: `status`, `headers` (case-insensitive), `body`
    (bytes) and `url` (the one that answered, after redirects).

    Tests build them to answer fetches natively:
    `FetchResponse(200, {"content-type": "application/json"}, b'{"ok": true}')`.
    """

    __slots__ = ("body", "headers", "status", "url")

    def __init__(
        self,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | str = b"",
        url: str = "",
    ) -> None:
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError(f"status must be an int from 100 to 599, got {status!r}")
        self.status = status
        self.headers = Headers(_items(headers))
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.url = url

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status <= 299

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with the charset of `Content-Type` (UTF-8 by default);
        bytes that do not decode become U+FFFD rather than an error, since the
        origin, not the function, chose them."""
        charset = encoding or _charset(self.headers.get("content-type", "")) or "utf-8"
        try:
            return self.body.decode(charset, "replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON, UTF-8 (or UTF-16/32) whatever the charset says
        (RFC 8259); `json.JSONDecodeError`, a `ValueError`, if it isn't JSON."""
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"FetchResponse({self.status}, url={self.url!r}, {len(self.body)} bytes)"


@dataclass(frozen=True)
class FetchRequest:
    """A fetch as the function asked for it, checked: what the backend sends."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float | None
    # Whether a GET may be answered from the node's origin cache.
    cache: bool = True


class Backend(Protocol):
    """Sends fetches: the host capability in wasm, the test's answers natively."""

    def fetch(self, request: FetchRequest) -> FetchResponse: ...


_backend: Backend | None = None


def use_backend(backend: Backend) -> None:
    """Set by the guest glue or `edgefn.testing`; functions never call this."""
    global _backend
    _backend = backend


def _current() -> Backend:
    if _backend is None:
        raise RuntimeError("edgefn.fetch needs the edgefn runtime or edgefn.testing")
    return _backend


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes | str | None = None,
    timeout: float | None = None,
    cache: bool = True,
) -> FetchResponse:
    """Send an HTTP request to `url` and return the answer, whatever its status.

    `url` must be an absolute http or https URL whose origin the manifest's
    `allowed_outbound_hosts` declares. A `str` body is sent as UTF-8.
    `timeout` is in seconds for the whole fetch, redirects included; the
    request's own deadline bounds it anyway. A GET is answered from the node's
    origin cache while the origin's `Cache-Control` lets a shared cache keep it
    (`cache=False`: always ask the origin, store nothing). Raises `OutboundNotAllowed`,
    `OutboundTimeout`, `OutboundTooLarge` or `OutboundFailed` (all
    `OutboundError`s, hence `HTTPError`s), and `ValueError`/`TypeError` for
    arguments the host would refuse.
    """
    # Checked here although the host checks everything again: the function gets a
    # clear error where its bug is, and cannot write header lines of its own into
    # the WIT `headers` string.
    if not isinstance(cache, bool):
        raise TypeError(f"fetch cache must be True or False, got {cache!r}")
    checked = FetchRequest(
        _method(method), _url(url), _headers(headers), _body(body), _timeout(timeout), cache
    )
    return _current().fetch(checked)


def timeout_ms(timeout: float | None) -> int:
    """The WIT `timeout-ms` for a checked timeout: 0 for none, at least 1, at most u32."""
    if timeout is None:
        return 0
    return min(max(1, math.ceil(timeout * 1000)), _U32_MAX)


_U32_MAX = 2**32 - 1
# RFC 9110 §5.6.2: a token, the grammar of a field name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Field values may not carry line breaks or NUL (RFC 9110 §5.5): they would end
# the header line, in the WIT `headers` string and on the wire.
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\0]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"fetch method must be a str, got {type(method).__name__}")
    upper = method.upper()
    if upper not in METHODS:
        raise ValueError(f"fetch method must be one of {', '.join(METHODS)}, got {method!r}")
    return upper


def _url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"fetch url must be a str, got {type(url).__name__}")
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError(f"fetch url must not contain spaces or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port, raises ValueError for a bad one
    except ValueError as exc:
        raise ValueError(f"fetch url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"fetch needs an absolute http:// or https:// URL, got {url!r}")
    return url


def _items(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, _MultiDict):  # every value of a repeated name, not the first
        return headers.multi_items()
    if isinstance(headers, Mapping):
        return list(headers.items())
    items = []
    for item in headers:
        if isinstance(item, (str, bytes)):
            raise TypeError(f"headers must be (name, value) pairs, got {item!r}")
        items.append(tuple(item))
    return items  # type: ignore[return-value]  # pairs checked by the caller


def _headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> list[tuple[str, str]]:
    if isinstance(headers, (str, bytes)):
        raise TypeError("fetch headers must be a mapping or (name, value) pairs, got a string")
    try:
        items = _items(headers)
    except (TypeError, ValueError):
        raise TypeError("fetch headers must be a mapping or (name, value) pairs") from None
    for item in items:
        if len(item) != 2:
            raise TypeError(f"fetch headers must be (name, value) pairs, got {item!r}")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"fetch header {name!r}: names and values must be str, got {value!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"fetch header name {name!r} is not a valid field name (RFC 9110)")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(
                f"fetch header {name!r}: values must not contain CR, LF or NUL, got {value!r}"
            )
    return items


def _body(body: bytes | str | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"fetch body must be bytes or str, got {type(body).__name__}")


def _timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"fetch timeout must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"fetch timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
