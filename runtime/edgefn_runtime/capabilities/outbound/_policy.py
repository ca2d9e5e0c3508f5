"""The rules of outbound HTTP: which URLs a function may reach, which addresses any may.

Two layers, both must agree before a connection is opened:

- `AllowedHosts`, the function's manifest (`allowed_outbound_hosts`, Spin's
  syntax): scheme, host (or `*.suffix`) and port. Nothing is allowed unless declared.
- `OutboundPolicy`, the operator's gateway config (`[outbound]`): networks no
  function may reach whatever its manifest says (loopback, private, link-local
  and cloud metadata, ...), exemptions from them, and the caps of one request.

`AllowedHosts.check(url)` turns a URL into a `Target`; `OutboundPolicy.resolve`
turns its host into the addresses the client may connect to, each one checked,
so the connection goes to an address that was judged (no DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import queue
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_BLOCKED",
    "AllowedHosts",
    "HostPattern",
    "IPNetwork",
    "OutboundFailure",
    "OutboundPolicy",
    "Target",
    "blocked_network_name",
    "parse_url",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MiB = 2**20
DEFAULT_PORTS = {"http": 80, "https": 443}
MANIFEST_HINT = "allowed_outbound_hosts in edgefn.toml"
EXEMPT_HINT = "an operator can exempt it with [outbound] allowed_networks"
# Longer URLs are a function's bug or an attack on the origin; 8 KiB is what
# most servers accept in a request line.
MAX_URL = 8192


class OutboundFailure(Exception):
    """An outbound request refused or failed; `kind` is one of
    `edgefn_contract.outbound.FAILURE_KINDS` (not_allowed, timeout, too_large, failed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[type[OutboundFailure], tuple[str, str]]:
        return (type(self), (self.kind, self.message))


# The networks no function reaches unless the operator exempts them, each with
# the name a refusal shows. IPv6 forms that embed an IPv4 address (mapped,
# compatible, translated, NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by the
# IPv4 address they embed (see `_views`); Teredo and local-use NAT64 hide or
# rewrite it in ways a host cannot judge, so they are blocked whole.
_BLOCKED: dict[str, str] = {
    "0.0.0.0/8": "this network; 0.0.0.0 reaches the local host",
    "127.0.0.0/8": "loopback",
    "10.0.0.0/8": "private, RFC 1918",
    "172.16.0.0/12": "private, RFC 1918",
    "192.168.0.0/16": "private, RFC 1918",
    "100.64.0.0/10": "carrier-grade NAT, RFC 6598",
    "169.254.0.0/16": "link-local, including cloud metadata 169.254.169.254",
    "192.0.0.0/24": "IETF protocol assignments",
    "198.18.0.0/15": "benchmarking, RFC 2544",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved, including broadcast 255.255.255.255",
    "::/128": "unspecified",
    "::1/128": "IPv6 loopback",
    "fc00::/7": "IPv6 unique local",
    "fe80::/10": "IPv6 link-local",
    "fec0::/10": "IPv6 site-local (deprecated)",
    "ff00::/8": "IPv6 multicast",
    "2001::/32": "Teredo tunnel, which hides the IPv4 address it reaches",
    "64:ff9b:1::/48": "local-use NAT64, RFC 8215",
}
DEFAULT_BLOCKED: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in _BLOCKED)
_NAMES = {ipaddress.ip_network(n): name for n, name in _BLOCKED.items()}

_V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def blocked_network_name(network: IPNetwork) -> str:
    """What a blocked network is, for messages."""
    return _NAMES.get(network, "blocked by the operator's [outbound] blocked_networks")


def _views(address: IPAddress) -> list[IPAddress]:
    """The addresses `address` reaches: itself, then any IPv4 address it embeds.

    `::ffff:127.0.0.1` connects to 127.0.0.1 on a dual-stack socket, and
    `64:ff9b::a00:1` through NAT64 to 10.0.0.1: both are judged.
    """
    views: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _V4_MAPPED or address in _V4_TRANSLATED or address in _NAT64:
            views.append(low)
        elif address in _V4_COMPATIBLE and int(address) > 1:  # not :: and ::1
            views.append(low)
        elif address in _SIX_TO_FOUR and address.sixtofour is not None:
            views.append(address.sixtofour)
    return views


@dataclass(frozen=True)
class Target:
    """One checked URL, ready to connect to."""

    url: str  # normalised absolute URL: scheme://host_header + target
    scheme: str  # "http" | "https"
    host: str  # lowercase ASCII (IDNA), IPv6 without brackets
    port: int  # explicit or the scheme's default
    target: str  # request target: path + "?" + query, "/" when empty; no fragment
    host_header: str  # host, plus ":port" when not the default; IPv6 in brackets

    @property
    def origin(self) -> str:
        """`scheme://host[:port]`, the manifest entry that allows this target."""
        return f"{self.scheme}://{self.host_header}"

    def shown(self) -> str:
        """The URL for messages: no query (it may carry tokens), at most 200 characters."""
        path = self.target.partition("?")[0]
        text = self.origin + path
        return text if len(text) <= 200 else text[:199] + "…"


# A DNS label after IDNA: letters, digits, '-' and '_' (found in real names,
# e.g. SRV-style and some CDN hosts), not starting or ending with '-'.
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
# Characters a request target may carry as they are; anything else is
# percent-encoded (non-ASCII as UTF-8, spaces), controls are refused.
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~?"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


def _host_kind(host: str) -> str:
    """Normalise a host as written in a URL or an entry: lowercase ASCII, IDNA-encoded.

    Raises ValueError saying what is wrong. An IPv6 literal comes bracketed.
    """
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if "%" in inner:
            raise ValueError(f"IPv6 zone identifiers are not supported: {host!r}")
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if not host:
        raise ValueError("the host is empty")
    name = host.lower()
    if name.endswith("."):  # the same DNS name, fully qualified
        name = name[:-1]
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{host!r} is not a valid host name") from None
    labels = name.split(".")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        # Only the dotted-quad form: getaddrinfo would also take 127.1,
        # 2130706433 or 0x7f.0.0.1, which hide an address from a reader.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(
                f"{host!r} is not a valid IPv4 address (write it as four decimal numbers "
                "such as 192.0.2.10)"
            ) from None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is not a valid host name")
    return name


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """`host[:port]` -> (host, port text or None); IPv6 keeps its brackets."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {netloc!r}")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after {host}")
        return host, rest[1:] if rest else None
    host, colon, port = netloc.rpartition(":")
    if not colon:
        return netloc, None
    return host, port


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise ValueError(f"the port must be a number from 1 to 65535, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class HostPattern:
    """One `allowed_outbound_hosts` entry: `scheme://host[:port]`.

    `scheme` is "http", "https" or "*"; `host` a lowercase ASCII name, an IP
    address, "*" (any host) or, with `wildcard`, the suffix of `*.suffix`;
    `port` an int, None for the URL scheme's default, or "*" for any.
    """

    scheme: str
    host: str
    port: int | Literal["*"] | None
    wildcard: bool = False

    @classmethod
    def parse(cls, entry: str) -> HostPattern:
        """Raises ValueError saying what is wrong and what is allowed."""
        if not isinstance(entry, str):
            raise ValueError(f"expected a string, got {entry!r}")
        scheme, sep, rest = entry.partition("://")
        if not sep:
            raise ValueError('must start with "http://", "https://" or "*://"')
        scheme = scheme.lower()
        if scheme not in ("http", "https", "*"):
            raise ValueError(f'the scheme must be http, https or *, got "{scheme}"')
        if rest.endswith("/"):  # "https://example.com/" means the host
            rest = rest[:-1]
        if any(c in rest for c in "/?#@") or _CONTROL.search(rest) or " " in rest:
            raise ValueError("no path, query, fragment or user name: only scheme://host[:port]")
        host, port_text = _split_netloc(rest)
        port: int | Literal["*"] | None = None
        if port_text == "*":
            port = "*"
        elif port_text is not None:
            port = _parse_port(port_text)
        wildcard = False
        if host == "*":
            name = "*"
        elif host.startswith("*."):
            wildcard, name = True, _host_kind(host[2:])
            if _is_ip(name):
                raise ValueError(f"a wildcard needs a DNS name after '*.', got {host!r}")
        elif "*" in host:
            raise ValueError(f"'*' may only be the whole host or start it as '*.', got {host!r}")
        else:
            name = _host_kind(host)
        return cls(scheme, name, port, wildcard)

    def matches(self, target: Target) -> bool:
        if self.scheme != "*" and self.scheme != target.scheme:
            return False
        if self.port is None:
            if target.port != DEFAULT_PORTS[target.scheme]:
                return False
        elif self.port != "*" and self.port != target.port:
            return False
        if self.host == "*":
            return True
        if self.wildcard:
            return target.host.endswith("." + self.host)
        return target.host == self.host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_url(url: str) -> Target:
    """Parse and normalise an absolute http(s) URL; OutboundFailure("not_allowed") if not one."""

    def refuse(why: str) -> OutboundFailure:
        # Neither the query nor a password: messages reach logs and responses.
        shown = _USERINFO.sub("", re.split(r"[?#]", url, maxsplit=1)[0])
        shown = shown if len(shown) <= 200 else shown[:199] + "…"
        return OutboundFailure("not_allowed", f"{shown!r} is not allowed: {why}")

    if not isinstance(url, str):
        raise OutboundFailure("not_allowed", f"the URL must be a string, got {type(url).__name__}")
    if len(url) > MAX_URL:
        raise refuse(f"URLs are limited to {MAX_URL} characters")
    if _CONTROL.search(url):
        # urlsplit drops tabs and line breaks silently; a request line must not carry them.
        raise refuse("control characters (line breaks, tabs, ...) must be percent-encoded")
    try:
        parts = urlsplit(url.strip(" "))
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if (
        not parts.scheme
        or not parts.netloc
        or not url.strip(" ").lower().startswith(parts.scheme + "://")
    ):
        raise refuse("not an absolute URL; write it as http://host/path or https://host/path")
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise refuse(f"the scheme must be http or https, not {scheme}")
    if "@" in parts.netloc:
        raise refuse("user names and passwords in URLs are not sent; use an Authorization header")
    try:
        host_text, port_text = _split_netloc(parts.netloc)
        host = _host_kind(host_text)
        port = DEFAULT_PORTS[scheme] if not port_text else _parse_port(port_text)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if not target.startswith("/"):
        target = "/" + target
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
    return Target(
        url=f"{scheme}://{host_header}{target}",
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        host_header=host_header,
    )


@dataclass(frozen=True)
class AllowedHosts:
    """A function's `allowed_outbound_hosts`, Spin's syntax; empty refuses every URL.

    `*://*:*` (any scheme, host and port) is accepted, as Spin does; the
    operator's blocked networks still apply to every address.
    """

    patterns: tuple[HostPattern, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowedHosts:
        patterns = []
        for entry in entries:
            try:
                patterns.append(HostPattern.parse(entry))
            except ValueError as exc:
                raise ValueError(
                    f'{entry!r}: {exc}. Allowed: "scheme://host[:port]" with scheme http, '
                    'https or *, host a name, "*.suffix", an IPv4 address or a bracketed '
                    'IPv6 address, port a number or "*", such as "https://images.example.com" '
                    'or "http://127.0.0.1:9000"'
                ) from None
        return cls(tuple(patterns))

    def check(self, url: str) -> Target:
        """`url`'s normalised target, or OutboundFailure("not_allowed") saying how to allow it."""
        target = parse_url(url)
        if any(pattern.matches(target) for pattern in self.patterns):
            return target
        advice = f'add "{target.origin}" to {MANIFEST_HINT}'
        if not self.patterns:
            advice = f"outbound HTTP is denied unless declared; {advice}"
        raise OutboundFailure("not_allowed", f"{target.shown()} is not allowed: {advice}")


def _resolve_in_thread(host: str, port: int, results: queue.SimpleQueue[object]) -> None:
    try:
        results.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except (OSError, UnicodeError) as exc:
        results.put(exc)


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's outbound policy (gateway config `[outbound]`); defaults are the safe ones."""

    blocked_networks: tuple[IPNetwork, ...] = DEFAULT_BLOCKED
    # Exemptions from blocked_networks, e.g. 127.0.0.1/32 for a local origin.
    allowed_networks: tuple[IPNetwork, ...] = ()
    # fetch() calls per request; the hops of one fetch's redirects count once
    # here and against max_redirects.
    max_fetches: int = 16
    max_response_bytes: int = 10 * MiB  # the body of one fetch
    # Every fetched body of one request together, Image.from_url's too.
    max_total_bytes: int = 32 * MiB
    max_body_bytes: int = 1 * MiB  # the body a function sends in one fetch
    max_redirects: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    # A PEM file of extra trusted CAs (private origins, tests); None: the system's.
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_fetches",
            "max_response_bytes",
            "max_total_bytes",
            "max_body_bytes",
            "max_redirects",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    def check_address(self, address: str) -> None:
        """OutboundFailure("not_allowed") if `address` (an IP literal) is in a blocked
        network and not exempted; an IPv6 address embedding an IPv4 one is judged by both."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise OutboundFailure("not_allowed", f"{address!r} is not an IP address") from None
        for view in _views(ip):
            blocked = next((n for n in self.blocked_networks if view in n), None)
            if blocked is None or any(view in n for n in self.allowed_networks):
                continue
            subject = address if view == ip else f"{address} embeds {view}, which"
            raise OutboundFailure(
                "not_allowed",
                f"{subject} is in the blocked network {blocked} "
                f"({blocked_network_name(blocked)}); {EXEMPT_HINT}",
            )

    def resolve(self, host: str, port: int, timeout: float) -> list[str]:
        """The checked addresses of `host`, in order, for the client to connect to.

        An IP literal needs no DNS; a name is looked up once, bounded by
        `timeout`. If any address is blocked the host is refused: picking a
        good one would let a name mix a public address with a private one.
        """
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if _is_ip(host):
            self.check_address(host)
            return [str(ipaddress.ip_address(host))]
        if timeout <= 0:
            raise OutboundFailure("timeout", f"no time left to resolve {host}")
        # getaddrinfo cannot be interrupted: it runs in a daemon thread (an
        # executor's threads would hold up the worker's exit while it hangs)
        # and the request stops waiting for it after `timeout`.
        results: queue.SimpleQueue[object] = queue.SimpleQueue()
        threading.Thread(
            target=_resolve_in_thread,
            args=(host, port, results),
            name="edgefn-resolve",
            daemon=True,
        ).start()
        try:
            answer = results.get(timeout=timeout)
        except queue.Empty:
            raise OutboundFailure(
                "timeout", f"resolving {host} took longer than {timeout:.3g} s"
            ) from None
        if isinstance(answer, BaseException):
            raise OutboundFailure("failed", f"cannot resolve {host}: {answer}")
        addresses: list[str] = []
        for *_, sockaddr in cast(list[tuple[Any, ...]], answer):
            address = str(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise OutboundFailure("failed", f"cannot resolve {host}: no addresses")
        for address in addresses:
            try:
                self.check_address(address)
            except OutboundFailure as exc:
                raise OutboundFailure(
                    "not_allowed", f"{host} resolves to {address}: {exc.message}"
                ) from None
        return addresses
