"""Outbound requests over urllib3, only ever to addresses the policy checked.

Why urllib3 (figures in bench/RESULTS.md, `bench/outbound_clients.py`):
- the connection goes to the address the policy resolved and checked, once per
  hop: pools are keyed by that IP, and the name is used only for TLS (SNI and
  the certificate check: `server_hostname`, `assert_hostname`) and the Host
  header, so a name that re-resolves elsewhere after the check (DNS
  rebinding) cannot move the connection;
- it reads no proxy variables (httpx and requests honour `HTTPS_PROXY`), and
  verifies TLS against the system's CA store (`ssl.create_default_context()`);
- its pools are thread-safe: one client serves every request of a worker.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import urllib3
from urllib3 import exceptions as u3

from ._policy import AllowedHosts, OutboundFailure, OutboundPolicy, Target

__all__ = ["Client", "Fetched"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Never sent to the next host of a redirect: credentials meant for the first.
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})
_CHUNK = 64 * 1024


@dataclass
class Fetched:
    """The response that ended a fetch (after any redirects)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    url: str


@dataclass
class Budget:
    """What one fetch may use: checked before every hop and every read."""

    deadline: float  # time.monotonic(): the fetch's own timeout or the request's, the sooner
    max_bytes: int  # response body bytes this fetch may receive
    too_large: str  # why that is the limit, for the message


class Client:
    """Sends a function's requests for one worker; keeps connections alive between them."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        context = ssl.create_default_context()
        if policy.ca_bundle:
            context.load_verify_locations(policy.ca_bundle)
        self._pools = urllib3.PoolManager(
            num_pools=64, maxsize=8, block=False, retries=False, ssl_context=context
        )

    def fetch(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        allowed: AllowedHosts,
        budget: Budget,
        sent: Callable[[str], None],
    ) -> Fetched:
        """Send the request, follow redirects the manifest and policy allow, and read
        the body within `budget`. `sent(status_class)` is called for every response,
        redirects' included ("2xx", "3xx", ...). Raises `OutboundFailure`."""
        policy = self.policy
        via = ""  # "<url> redirected to ": how the fetch got to `target`
        for hop in range(policy.max_redirects + 1):
            try:
                addresses = policy.resolve(target.host, target.port, _left(budget))
            except OutboundFailure as failure:
                raise OutboundFailure(failure.kind, via + failure.message) from None
            response = self._open(method, target, headers, body, addresses, budget)
            sent(f"{response.status // 100}xx")
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or location is None:
                return Fetched(
                    response.status,
                    list(response.headers.iteritems()),
                    _read(response, budget, policy.read_timeout),
                    target.url,
                )
            _discard(response)
            if hop == policy.max_redirects:
                break
            following = urljoin(target.url, location)
            via = f"{target.url} redirected to {following}: "
            try:
                next_target = allowed.check(following)
            except OutboundFailure as failure:
                raise OutboundFailure(failure.kind, via + failure.message) from None
            if (next_target.scheme, next_target.host, next_target.port) != (
                target.scheme,
                target.host,
                target.port,
            ):
                headers = [(k, v) for k, v in headers if k.lower() not in _CREDENTIALS]
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                # What browsers and fetch() do: the next request is a GET without a body.
                method, body = ("HEAD" if method == "HEAD" else "GET"), b""
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            target = next_target
        raise OutboundFailure(
            "failed", f"more than {policy.max_redirects} redirects, the last to {target.url}"
        )

    def _open(
        self,
        method: str,
        target: Target,
        headers: list[tuple[str, str]],
        body: bytes,
        addresses: list[str],
        budget: Budget,
    ) -> Any:
        """The response head from the first of `addresses` that connects."""
        pool_kwargs = {}
        if target.scheme == "https":
            pool_kwargs = {"server_hostname": target.host, "assert_hostname": target.host}
        fields = urllib3.HTTPHeaderDict(headers)
        fields["Host"] = target.host_header
        refused: Exception | None = None
        for address in addresses:
            pool = self._pools.connection_from_host(
                address, target.port, target.scheme, pool_kwargs=pool_kwargs
            )
            left = _left(budget)
            timeout = urllib3.Timeout(
                connect=min(self.policy.connect_timeout, left),
                read=min(self.policy.read_timeout, left),
            )
            try:
                return pool.urlopen(
                    method,
                    target.target,
                    body=body if body or method in ("POST", "PUT", "PATCH") else None,
                    headers=fields,
                    retries=False,
                    redirect=False,
                    timeout=timeout,
                    preload_content=False,
                    decode_content=False,
                    assert_same_host=False,
                )
            except (u3.ConnectTimeoutError, u3.NewConnectionError) as exc:
                refused = exc  # the next address may answer
            except u3.ReadTimeoutError:
                raise _timeout(target, budget) from None
            except u3.SSLError as exc:
                raise OutboundFailure("failed", f"TLS with {target.host} failed: {exc}") from None
            except (u3.HTTPError, OSError) as exc:
                raise OutboundFailure("failed", f"{target.url}: {_reason(exc)}") from None
        if isinstance(refused, u3.ConnectTimeoutError) or time.monotonic() >= budget.deadline:
            raise _timeout(target, budget)
        raise OutboundFailure(
            "failed", f"cannot connect to {target.host_header}: {_reason(refused)}"
        )


def _read(response: Any, budget: Budget, read_timeout: float) -> bytes:
    """The whole body, refused past `budget.max_bytes` (by its Content-Length before
    a byte is read) or `budget.deadline` (checked between reads: a server dripping a
    byte at a time cannot stretch the fetch past it)."""
    try:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > budget.max_bytes:
            raise OutboundFailure(
                "too_large",
                f"the response announces {int(length):,} bytes; {budget.too_large}",
            )
        chunks: list[bytes] = []
        received = 0
        while True:
            left = _left(budget)
            sock = getattr(response.connection, "sock", None)
            if sock is not None:
                sock.settimeout(min(read_timeout, left))
            try:
                chunk = response.read1(_CHUNK)
            except u3.ReadTimeoutError:
                raise OutboundFailure(
                    "timeout", "the response body stopped arriving before its end"
                ) from None
            except (u3.HTTPError, OSError) as exc:
                raise OutboundFailure("failed", f"reading the response: {_reason(exc)}") from None
            if not chunk:
                break
            received += len(chunk)
            if received > budget.max_bytes:
                raise OutboundFailure(
                    "too_large",
                    f"the response is over {budget.max_bytes:,} bytes; {budget.too_large}",
                )
            chunks.append(chunk)
    except BaseException:
        _discard(response, reuse=False)
        raise
    response.release_conn()
    return b"".join(chunks)


def _discard(response: Any, reuse: bool = True) -> None:
    """Give the connection back: kept alive only after a small, finished body."""
    length = response.headers.get("content-length", "")
    if reuse and length.isdigit() and int(length) <= _CHUNK:
        try:
            response.drain_conn()
            response.release_conn()
            return
        except (u3.HTTPError, OSError):
            pass
    response.close()
    response.release_conn()


def _left(budget: Budget) -> float:
    left = budget.deadline - time.monotonic()
    if left <= 0:
        raise OutboundFailure("timeout", "no time left for the request")
    return left


def _timeout(target: Target, budget: Budget) -> OutboundFailure:
    return OutboundFailure("timeout", f"{target.host_header} did not answer in time")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no address to connect to"
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1] or type(exc).__name__
