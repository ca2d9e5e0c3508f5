"""Outbound HTTP's rules: manifest patterns, URL checks, blocked networks, DNS (no wasm)."""

from __future__ import annotations

import ipaddress
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attacks
from edgefn_contract.outbound import FAILURE_KINDS
from edgefn_runtime.capabilities.outbound import (
    DEFAULT_BLOCKED,
    AllowedHosts,
    OutboundFailure,
    OutboundPolicy,
    Target,
)

AREA = "Outbound policy: manifest hosts and blocked networks (tests/test_outbound_policy.py)"

HOSTS = AllowedHosts.parse(
    [
        "https://images.example.com",
        "https://*.s3.amazonaws.com",
        "http://127.0.0.1:9000",
        "http://[::1]:*",
        "*://bücher.example",
        "https://api.example.com:*",
    ]
)


def refusal(hosts: AllowedHosts, url: str) -> str:
    with pytest.raises(OutboundFailure) as caught:
        hosts.check(url)
    assert caught.value.kind == "not_allowed"
    return caught.value.message


# -- the manifest's patterns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://images.example.com/a.jpg",
        "HTTPS://Images.Example.COM:443/a.jpg",  # case, the default port written out
        "https://images.example.com./a.jpg",  # the fully qualified name is the same host
        "https://bucket.s3.amazonaws.com/key",
        "https://a.b.c.s3.amazonaws.com/key",  # any depth below the suffix
        "http://127.0.0.1:9000/original.jpg",
        "http://[::1]:8080/",
        "http://[0:0::1]/",  # IPv6 in any spelling
        "http://bücher.example/",  # IDNA, either scheme with `*://`
        "https://xn--bcher-kva.example/",
        "https://api.example.com:8443/v1",
    ],
)
def test_declared_hosts_are_allowed(url: str) -> None:
    assert HOSTS.check(url).scheme in ("http", "https")


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("https://evil.example.com/", '"https://evil.example.com"'),
        ("http://images.example.com/", '"http://images.example.com"'),  # the scheme counts
        ("https://images.example.com:8443/", '"https://images.example.com:8443"'),  # the port
        ("https://s3.amazonaws.com/", '"https://s3.amazonaws.com"'),  # not the suffix itself
        ("https://evil-s3.amazonaws.com.evil.com/", '"https://evil-s3.amazonaws.com.evil.com"'),
        ("https://images.example.com.evil.com/", '"https://images.example.com.evil.com"'),
        ("http://127.0.0.1:9001/", '"http://127.0.0.1:9001"'),
        ("http://127.0.0.2:9000/", '"http://127.0.0.2:9000"'),
        ("http://[::2]:80/", '"http://[::2]"'),
    ],
)
def test_undeclared_hosts_are_refused_with_the_entry_that_would_allow_them(
    url: str, advice: str
) -> None:
    message = refusal(HOSTS, url)
    assert message.endswith(
        f"is not allowed: add {advice} to allowed_outbound_hosts in edgefn.toml"
    )


def test_the_message_is_the_one_the_docs_promise() -> None:
    assert refusal(HOSTS, "https://evil.example.com/?token=secret") == (
        'https://evil.example.com/ is not allowed: add "https://evil.example.com" to '
        "allowed_outbound_hosts in edgefn.toml"
    )  # the query, which may carry a token, is not repeated


def test_nothing_is_allowed_by_default() -> None:
    message = refusal(AllowedHosts(), "https://images.example.com/a.jpg")
    assert "outbound HTTP is denied unless declared" in message
    assert '"https://images.example.com"' in message
    assert AllowedHosts.parse([]) == AllowedHosts()


@pytest.mark.parametrize(
    "url",
    ["http://anything.example/", "https://10.0.0.1:1/", "https://[::1]:65535/", "http://a.b.c/"],
)
def test_any_scheme_host_and_port_with_the_catch_all_entry(url: str) -> None:
    assert AllowedHosts.parse(["*://*:*"]).check(url)


def test_a_host_wildcard_keeps_the_scheme_and_the_default_port() -> None:
    hosts = AllowedHosts.parse(["https://*"])
    assert hosts.check("https://anything.example/").port == 443
    assert "is not allowed" in refusal(hosts, "http://anything.example/")
    assert "is not allowed" in refusal(hosts, "https://anything.example:8443/")


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("images.example.com", 'must start with "http://", "https://" or "*://"'),
        ("ftp://images.example.com", "the scheme must be http, https or *"),
        ("https://images.example.com/path", "no path, query, fragment or user name"),
        ("https://user@images.example.com", "no path, query, fragment or user name"),
        ("https://images.example.com?x=1", "no path, query, fragment or user name"),
        ("https://images.example.com:0", "the port must be a number from 1 to 65535"),
        ("https://images.example.com:70000", "the port must be a number from 1 to 65535"),
        ("https://images.example.com:http", "the port must be a number from 1 to 65535"),
        ("https://", "the host is empty"),
        ("https://ex*ample.com", "'*' may only be the whole host or start it as '*.'"),
        ("https://*.*.example.com", "is not a valid host name"),
        ("https://*.10.0.0.1", "a wildcard needs a DNS name"),
        ("https://[::1", "unclosed '['"),
        ("https://[fe80::1%eth0]", "zone identifiers are not supported"),
        ("https://[not-v6]", "is not an IPv6 address"),
        ("https://127.1", "is not a valid IPv4 address"),
        ("https://2130706433", "is not a valid IPv4 address"),
        ("https://010.0.0.1", "is not a valid IPv4 address"),
        ("https://exa mple.com", "no path, query, fragment or user name"),
        ("https://-example.com", "is not a valid host name"),
        ("https://a..example.com", "is not a valid host name"),
    ],
)
def test_bad_entries_say_what_is_wrong_and_what_is_allowed(entry: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        AllowedHosts.parse(["https://fine.example", entry])
    message = str(caught.value)
    assert message.startswith(repr(entry)), message
    assert says in message
    assert 'Allowed: "scheme://host[:port]"' in message


def test_a_trailing_slash_on_an_entry_is_the_host() -> None:
    assert AllowedHosts.parse(["https://images.example.com/"]).check("https://images.example.com")


# -- URLs: normalisation and refusals -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "https://images.example.com",
            Target(
                "https://images.example.com/",
                "https",
                "images.example.com",
                443,
                "/",
                "images.example.com",
            ),
        ),
        (
            "HTTPS://IMAGES.example.com:443/a b/ü?q=1 2&x=%2F#fragment",
            Target(
                "https://images.example.com/a%20b/%C3%BC?q=1%202&x=%2F",
                "https",
                "images.example.com",
                443,
                "/a%20b/%C3%BC?q=1%202&x=%2F",
                "images.example.com",
            ),
        ),
        (
            "https://api.example.com:8443?x=1",
            Target(
                "https://api.example.com:8443/?x=1",
                "https",
                "api.example.com",
                8443,
                "/?x=1",
                "api.example.com:8443",
            ),
        ),
        (
            "http://[0::1]:8080/p",
            Target("http://[::1]:8080/p", "http", "::1", 8080, "/p", "[::1]:8080"),
        ),
        (
            "http://BÜCHER.example/",
            Target(
                "http://xn--bcher-kva.example/",
                "http",
                "xn--bcher-kva.example",
                80,
                "/",
                "xn--bcher-kva.example",
            ),
        ),
        (
            "http://127.0.0.1:9000",
            Target("http://127.0.0.1:9000/", "http", "127.0.0.1", 9000, "/", "127.0.0.1:9000"),
        ),
    ],
)
def test_urls_are_normalised(url: str, target: Target) -> None:
    assert HOSTS.check(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("/relative/path", "not an absolute URL"),
        ("images.example.com/a.jpg", "not an absolute URL"),
        ("https:images.example.com", "not an absolute URL"),
        ("https:///images.example.com", "not an absolute URL"),
        ("ftp://images.example.com/", "the scheme must be http or https, not ftp"),
        ("file:///etc/passwd", "not an absolute URL"),
        ("gopher://images.example.com/", "the scheme must be http or https"),
        ("https://:443/", "the host is empty"),
        ("https://images.example.com:0/", "the port must be a number from 1 to 65535"),
        ("https://images.example.com:65536/", "the port must be a number from 1 to 65535"),
        ("https://images.example.com:+443/", "the port must be a number from 1 to 65535"),
        ("https://images.example.com:४४३/", "the port must be a number from 1 to 65535"),
        ("https://images.example.com\r\nX-Injected: 1/", "control characters"),
        ("https://images.example.com/a\tb", "control characters"),
        ("https://images.example.com/\x00", "control characters"),
        ("https://[::1/", "Invalid IPv6 URL"),
        ("https://images.example.com%2Eevil.com/", "is not a valid host name"),
        ("https://images.example.com\\@evil.com/", "user names and passwords"),
        ("https://evil.com\\.images.example.com/", "is not a valid host name"),
        ("https://0x7f.0.0.1/", "is not a valid IPv4 address"),
        ("https://" + "a" * 64 + ".example.com/", "is not a valid host name"),
        ("https://images.example.com/" + "a" * 9000, "URLs are limited to 8192 characters"),
    ],
)
def test_bad_urls_are_refused_saying_which_rule(url: str, says: str) -> None:
    assert says in refusal(AllowedHosts.parse(["*://*:*"]), url)


def test_credentials_in_a_url_are_refused_and_not_repeated() -> None:
    message = refusal(HOSTS, "https://user:hunter2@images.example.com/a.jpg?sig=abc")
    assert "use an Authorization header" in message
    assert "hunter2" not in message and "sig=abc" not in message
    attacks.record(
        AREA,
        "hide the real host behind userinfo (https://images.example.com@evil.com/, "
        "https://images.example.com\\@evil.com/)",
        "refused: no userinfo in outbound URLs",
    )


def test_address_spellings_that_hide_an_address_are_refused() -> None:
    everything = AllowedHosts.parse(["*://*:*"])
    for url in ("http://2130706433/", "http://127.1/", "http://0x7f000001/", "http://0177.0.0.1/"):
        assert "is not a valid" in refusal(everything, url), url
    attacks.record(
        AREA,
        "reach loopback through another IPv4 spelling (2130706433, 127.1, 0x7f000001, 0177.0.0.1)",
        "refused: only dotted-quad IPv4",
    )


# -- the operator's blocked networks --------------------------------------------------------

DEFAULT = OutboundPolicy()


def blocked_message(policy: OutboundPolicy, address: str) -> str:
    with pytest.raises(OutboundFailure) as caught:
        policy.check_address(address)
    assert caught.value.kind == "not_allowed"
    return caught.value.message


@pytest.mark.parametrize(
    ("address", "network", "name"),
    [
        ("0.0.0.0", "0.0.0.0/8", "this network"),
        ("127.0.0.1", "127.0.0.0/8", "loopback"),
        ("127.0.0.2", "127.0.0.0/8", "loopback"),
        ("10.0.0.5", "10.0.0.0/8", "private, RFC 1918"),
        ("172.31.255.255", "172.16.0.0/12", "private, RFC 1918"),
        ("192.168.1.1", "192.168.0.0/16", "private, RFC 1918"),
        ("100.100.100.200", "100.64.0.0/10", "carrier-grade NAT"),
        ("169.254.169.254", "169.254.0.0/16", "cloud metadata 169.254.169.254"),
        ("192.0.0.170", "192.0.0.0/24", "IETF protocol assignments"),
        ("198.19.0.1", "198.18.0.0/15", "benchmarking"),
        ("224.0.0.1", "224.0.0.0/4", "multicast"),
        ("255.255.255.255", "240.0.0.0/4", "broadcast"),
        ("::", "::/128", "unspecified"),
        ("::1", "::1/128", "IPv6 loopback"),
        ("fd00::1", "fc00::/7", "IPv6 unique local"),
        ("fe80::1", "fe80::/10", "IPv6 link-local"),
        ("fe80::1%eth0", "fe80::/10", "IPv6 link-local"),  # as getaddrinfo writes it
        ("ff02::1", "ff00::/8", "IPv6 multicast"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32", "Teredo"),
    ],
)
def test_each_default_blocked_network_is_named_in_the_refusal(
    address: str, network: str, name: str
) -> None:
    message = blocked_message(DEFAULT, address)
    assert message.startswith(f"{address} is in the blocked network {network} (")
    assert name in message
    assert message.endswith("an operator can exempt it with [outbound] allowed_networks")


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::ffff:0:10.0.0.1", "10.0.0.1"),  # IPv4-translated
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible (deprecated)
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
        ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_embed(address: str, embedded: str) -> None:
    message = blocked_message(DEFAULT, address)
    assert message.startswith(f"{address} embeds {embedded}, which is in the blocked network")
    exempt = OutboundPolicy(allowed_networks=(ipaddress.ip_network(embedded),))
    exempt.check_address(address)  # judged as the IPv4 address, exempted as it
    # a public address embedded the same way passes
    public = address.replace(embedded, "93.184.216.34") if "." in address else None
    if public:
        DEFAULT.check_address(public)
    attacks.record(
        AREA,
        "reach a blocked IPv4 address through an IPv6 form that embeds it "
        "(::ffff:127.0.0.1, ::127.0.0.1, 64:ff9b::/96, 2002::/16)",
        "refused: the embedded IPv4 address is judged",
    )


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    DEFAULT.check_address(address)


def test_not_an_address() -> None:
    assert "is not an IP address" in blocked_message(DEFAULT, "localhost")


def test_the_operator_can_exempt_one_address_and_block_more() -> None:
    policy = OutboundPolicy(
        blocked_networks=(*DEFAULT_BLOCKED, ipaddress.ip_network("203.0.113.0/24")),
        allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    policy.check_address("127.0.0.1")
    assert "127.0.0.0/8 (loopback)" in blocked_message(policy, "127.0.0.2")
    assert "203.0.113.0/24 (blocked by the operator's [outbound] blocked_networks)" in (
        blocked_message(policy, "203.0.113.9")
    )


def _address_in(network: ipaddress.IPv4Network | ipaddress.IPv6Network, offset: int) -> Any:
    return network.network_address + offset % network.num_addresses


BLOCKED_ADDRESSES = st.builds(
    _address_in, st.sampled_from(DEFAULT_BLOCKED), st.integers(min_value=0, max_value=2**128)
)


@settings(max_examples=500, deadline=None)
@given(BLOCKED_ADDRESSES)
def test_no_address_in_a_blocked_network_passes(address: Any) -> None:
    with pytest.raises(OutboundFailure):
        DEFAULT.check_address(str(address))
    if address.version == 4:  # nor the IPv6 forms that embed it
        for prefix in ("::ffff:", "::ffff:0:", "64:ff9b::"):
            with pytest.raises(OutboundFailure):
                DEFAULT.check_address(f"{prefix}{address}")
        with pytest.raises(OutboundFailure):
            DEFAULT.check_address(str(ipaddress.IPv6Address((0x2002 << 112) | int(address) << 80)))


IPV4 = st.one_of(
    BLOCKED_ADDRESSES.filter(lambda a: a.version == 4),
    st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address),
)
# IPv6 forms embedding an IPv4 address: mapped, translated, compatible, NAT64, 6to4.
EMBEDDINGS = [0xFFFF << 32, 0xFFFF << 64, 0, 0x64FF9B << 96]
EMBEDDED = st.one_of(
    st.builds(lambda p, v4: ipaddress.IPv6Address(p | int(v4)), st.sampled_from(EMBEDDINGS), IPV4),
    st.builds(
        lambda v4, low: ipaddress.IPv6Address((0x2002 << 112) | int(v4) << 80 | low),
        IPV4,
        st.integers(0, 2**80 - 1),
    ),
)
ANY_ADDRESS = st.one_of(
    BLOCKED_ADDRESSES,
    IPV4,
    EMBEDDED,
    st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address),
)


@settings(max_examples=1000, deadline=None)
@given(ANY_ADDRESS, st.lists(BLOCKED_ADDRESSES, max_size=3), st.integers(0, 128))
def test_an_address_passes_only_outside_the_blocked_networks_or_exempted(
    address: Any, exempt_around: list[Any], prefix: int
) -> None:
    """The oracle, independent of `_views`: an address passes iff neither it nor an
    IPv4 address it maps to (::ffff:, 6to4, ...) is blocked and not exempted."""
    exempt = tuple(
        ipaddress.ip_network(f"{a}/{min(prefix, a.max_prefixlen)}", strict=False)
        for a in exempt_around
    )
    policy = OutboundPolicy(allowed_networks=exempt)

    def blocked(ip: Any) -> bool:
        return any(ip in n for n in DEFAULT_BLOCKED) and not any(ip in n for n in exempt)

    reached = [address]
    if address.version == 6:
        reached += [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
        if address in ipaddress.ip_network("64:ff9b::/96") or address in ipaddress.ip_network(
            "::ffff:0:0:0/96"
        ):
            reached.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible
            reached.append(ipaddress.IPv4Address(int(address)))
    if any(blocked(ip) for ip in reached):
        with pytest.raises(OutboundFailure):
            policy.check_address(str(address))
    else:
        policy.check_address(str(address))


# -- resolving: once, every address checked, bounded ----------------------------------------


def test_a_name_resolving_to_loopback_is_refused_unless_exempted() -> None:
    with pytest.raises(OutboundFailure) as caught:
        DEFAULT.resolve("localhost", 80, timeout=5)
    assert caught.value.kind == "not_allowed"
    assert caught.value.message.startswith("localhost resolves to ")
    assert "(loopback)" in caught.value.message
    loopback = OutboundPolicy(
        allowed_networks=tuple(map(ipaddress.ip_network, ["127.0.0.0/8", "::1"]))
    )
    addresses = loopback.resolve("localhost", 80, timeout=5)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    attacks.record(
        AREA, "reach loopback through a name that resolves to it (localhost)", "refused after DNS"
    )


def fake_getaddrinfo(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append((host, port))
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_one_blocked_address_refuses_the_whole_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_getaddrinfo(monkeypatch, "93.184.216.34", "169.254.169.254")
    with pytest.raises(OutboundFailure) as caught:
        DEFAULT.resolve("mixed.example", 443, timeout=5)
    assert caught.value.message.startswith("mixed.example resolves to 169.254.169.254: ")
    attacks.record(
        AREA,
        "a name resolving to a public and a metadata address (169.254.169.254)",
        "the whole name refused, not the good address picked",
    )


def test_names_are_resolved_once_and_the_checked_addresses_returned_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_getaddrinfo(monkeypatch, "2606:4700::1111", "93.184.216.34", "93.184.216.34")
    assert DEFAULT.resolve("origin.example", 8443, timeout=5) == [
        "2606:4700::1111",
        "93.184.216.34",
    ]
    assert calls == [("origin.example", 8443)]


def test_ip_literals_are_not_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_getaddrinfo(monkeypatch)
    assert DEFAULT.resolve("93.184.216.34", 80, timeout=5) == ["93.184.216.34"]
    assert DEFAULT.resolve("[2606:4700::1111]", 80, timeout=5) == ["2606:4700::1111"]
    with pytest.raises(OutboundFailure, match=r"169\.254\.0\.0/16"):
        DEFAULT.resolve("169.254.169.254", 80, timeout=5)
    assert calls == []
    attacks.record(
        AREA,
        "reach cloud metadata by IP literal (169.254.169.254)",
        "refused before DNS or connect",
    )


def test_a_failed_lookup_is_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(OutboundFailure) as caught:
        DEFAULT.resolve("nowhere.invalid", 80, timeout=5)
    assert caught.value.kind == "failed"
    assert caught.value.message.startswith("cannot resolve nowhere.invalid: ")


def test_no_addresses_is_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_getaddrinfo(monkeypatch)
    with pytest.raises(OutboundFailure, match="no addresses") as caught:
        DEFAULT.resolve("empty.example", 80, timeout=5)
    assert caught.value.kind == "failed"


@pytest.fixture
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """getaddrinfo blocks until the test ends (as a dead resolver does for ~10 s)."""
    release = threading.Event()

    def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "released")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


def test_a_hanging_lookup_times_out_at_the_deadline(hanging_dns: threading.Event) -> None:
    started = time.monotonic()
    with pytest.raises(OutboundFailure) as caught:
        DEFAULT.resolve("slow.example", 80, timeout=0.2)
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert "resolving slow.example took longer than 0.2 s" in caught.value.message
    assert 0.2 <= elapsed < 1.0
    with pytest.raises(OutboundFailure, match="no time left") as caught:
        DEFAULT.resolve("slow.example", 80, timeout=0)
    assert caught.value.kind == "timeout"


def test_failures_pickle_and_use_the_contracts_kinds() -> None:
    failure = pickle.loads(pickle.dumps(OutboundFailure("timeout", "slow")))
    assert (failure.kind, failure.message, str(failure)) == ("timeout", "slow", "slow")
    assert set(FAILURE_KINDS) == {"not_allowed", "timeout", "too_large", "failed"}


def test_policy_defaults_and_validation() -> None:
    policy = OutboundPolicy()
    assert (policy.max_fetches, policy.max_redirects) == (16, 5)
    assert (policy.max_response_bytes, policy.max_total_bytes, policy.max_body_bytes) == (
        10 * 2**20,
        32 * 2**20,
        2**20,
    )
    assert (policy.connect_timeout, policy.read_timeout, policy.ca_bundle) == (5.0, 10.0, None)
    assert pickle.loads(pickle.dumps(policy)) == policy
    with pytest.raises(ValueError, match="max_fetches"):
        OutboundPolicy(max_fetches=-1)
    with pytest.raises(ValueError, match="read_timeout"):
        OutboundPolicy(read_timeout=0)
