"""Outbound configuration: the manifest's `allowed_outbound_hosts`, the gateway's `[outbound]`."""

from __future__ import annotations

import ipaddress
import json
import pickle
from pathlib import Path

import pytest

from edgefn_platform import Manifest, ManifestError, parse_manifest
from edgefn_platform.gateway.policy import OUTBOUND_KEYS, ConfigError, Policy, load_policy
from edgefn_runtime.capabilities.outbound import DEFAULT_BLOCKED, AllowedHosts, OutboundPolicy


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    return caught.value.problems


# -- the manifest ---------------------------------------------------------------------------

MANIFEST = """
name = "resize"
allowed_outbound_hosts = [
    "https://images.example.com",
    "{{ ORIGIN }}",
    "https://{{CDN_HOST}}:{{ CDN_PORT }}",
    "https://*.s3.amazonaws.com",
]
[env]
ORIGIN = "http://127.0.0.1:9000"
CDN_HOST = "cdn.example.net"
CDN_PORT = "8443"
"""


def test_entries_are_kept_as_written_and_resolved_from_env() -> None:
    manifest = parse_manifest(MANIFEST)
    assert manifest.allowed_outbound_hosts == (
        "https://images.example.com",
        "{{ ORIGIN }}",
        "https://{{CDN_HOST}}:{{ CDN_PORT }}",
        "https://*.s3.amazonaws.com",
    )
    assert manifest.outbound_hosts() == (
        "https://images.example.com",
        "http://127.0.0.1:9000",
        "https://cdn.example.net:8443",
        "https://*.s3.amazonaws.com",
    )
    assert manifest.entry == "app:app"  # the hosts do not leak into other fields
    assert manifest.grants() == {
        "outbound": AllowedHosts.parse(manifest.outbound_hosts()),
        "function": manifest.name,
    }
    hosts = AllowedHosts.parse(manifest.outbound_hosts())
    assert hosts.check("http://127.0.0.1:9000/a.jpg").port == 9000
    assert hosts.check("https://cdn.example.net:8443/a.jpg").host == "cdn.example.net"


def test_nothing_is_allowed_by_default() -> None:
    manifest = parse_manifest('name = "resize"')
    assert manifest.allowed_outbound_hosts == () and manifest.outbound_hosts() == ()


def test_the_entries_survive_the_registrys_round_trip() -> None:
    manifest = parse_manifest(MANIFEST)
    stored = json.loads(json.dumps(manifest.to_dict()))
    assert stored["allowed_outbound_hosts"][1] == "{{ ORIGIN }}"
    assert Manifest.from_dict(stored) == manifest
    # a manifest stored before outbound HTTP loads, allowing nothing
    del stored["allowed_outbound_hosts"]
    assert Manifest.from_dict(stored).allowed_outbound_hosts == ()


@pytest.mark.parametrize(
    ("entries", "env", "says"),
    [
        ('"https://images.example.com"', "", "must be a list of"),
        ('["ftp://images.example.com"]', "", "[0]: 'ftp://images.example.com': the scheme must"),
        ('["https://ok.example", 42]', "", "[1]: must be a string"),
        ('["{{ ORIGIN }}"]', "", "[0]: {{ ORIGIN }} names no variable of [env] (defined: none)"),
        (
            '["https://{{ HOST }}"]',
            'ORIGIN = "x"',
            "[0]: {{ HOST }} names no variable of [env] (defined: ORIGIN)",
        ),
        ('["{{ 1ORIGIN }}"]', "", "[0]: {{ 1ORIGIN }}: a template names an [env] variable"),
        ('["{{ ORIGIN }"]', 'ORIGIN = "x"', "templates are written {{ NAME }}"),
        ('["https://{ORIGIN}"]', 'ORIGIN = "x"', "templates are written {{ NAME }}"),
        (
            '["{{ ORIGIN }}"]',
            'ORIGIN = "images.example.com"',
            '[0]: \'images.example.com\': must start with "http://", "https://" or "*://". '
            'Allowed: "scheme://host[:port]"',
        ),
        ('["{{ ORIGIN }}"]', 'ORIGIN = "https://a.example/path"', "(from '{{ ORIGIN }}')"),
    ],
)
def test_bad_entries_are_problems_naming_their_index(entries: str, env: str, says: str) -> None:
    found = problems(f'name = "resize"\nallowed_outbound_hosts = {entries}\n[env]\n{env}\n')
    assert len(found) == 1
    assert found[0].startswith("allowed_outbound_hosts")
    assert says in found[0], found[0]


def test_outbound_problems_are_reported_with_the_others() -> None:
    found = problems('name = "Bad"\nallowed_outbound_hosts = ["https://a.example/x", "{{ X }}"]')
    assert [p.split(":")[0] for p in found] == [
        "name",
        "allowed_outbound_hosts[0]",
        "allowed_outbound_hosts[1]",
    ]


# -- the gateway's [outbound] ---------------------------------------------------------------


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_the_default_policy_is_the_safe_one() -> None:
    assert load_policy(None, {}).outbound == OutboundPolicy() == Policy().outbound
    assert OutboundPolicy().blocked_networks == DEFAULT_BLOCKED


def test_every_key_from_the_config_file(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    path = config(
        tmp_path,
        f"""
        [outbound]
        allowed_networks = ["127.0.0.1/32", "::1/128"]
        blocked_networks = ["203.0.113.0/24", "10.0.0.0/8"]
        max_fetches = 4
        max_response_bytes = "2MiB"
        max_total_bytes = "8MiB"
        max_body_bytes = "64KiB"
        max_redirects = 2
        connect_timeout = "500ms"
        read_timeout = 3
        ca_bundle = "{bundle}"
        """,
    )
    outbound = load_policy(path, {}).outbound
    assert outbound.allowed_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    # added to the defaults, never replacing them; a default named again is not repeated
    assert outbound.blocked_networks == (*DEFAULT_BLOCKED, ipaddress.ip_network("203.0.113.0/24"))
    assert (outbound.max_fetches, outbound.max_redirects) == (4, 2)
    assert (outbound.max_response_bytes, outbound.max_total_bytes) == (2 * 2**20, 8 * 2**20)
    assert outbound.max_body_bytes == 64 * 2**10
    assert (outbound.connect_timeout, outbound.read_timeout) == (0.5, 3.0)
    assert outbound.ca_bundle == str(bundle.resolve())
    outbound.check_address("127.0.0.1")
    with pytest.raises(Exception, match="127.0.0.0/8"):
        outbound.check_address("127.0.0.2")


def test_variables_win_and_lists_are_comma_separated(tmp_path: Path) -> None:
    path = config(tmp_path, '[outbound]\nmax_fetches = 4\nallowed_networks = ["10.1.0.0/16"]\n')
    outbound = load_policy(
        path,
        {
            "EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32, ::1/128",
            "EDGEFN_OUTBOUND_BLOCKED_NETWORKS": "198.51.100.0/24",
            "EDGEFN_OUTBOUND_MAX_TOTAL_BYTES": "1MiB",
            "EDGEFN_OUTBOUND_READ_TIMEOUT": "2s",
        },
    ).outbound
    assert outbound.allowed_networks == tuple(
        map(ipaddress.ip_network, ["127.0.0.1/32", "::1/128"])
    )
    assert outbound.blocked_networks[-1] == ipaddress.ip_network("198.51.100.0/24")
    assert outbound.blocked_networks[: len(DEFAULT_BLOCKED)] == DEFAULT_BLOCKED
    assert (outbound.max_fetches, outbound.max_total_bytes, outbound.read_timeout) == (
        4,
        2**20,
        2.0,
    )


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("max_fetch", "4", "outbound.max_fetch: unknown key (allowed: allowed_networks, "),
        (
            "allowed_networks",
            "127.0.0.1/8",
            "outbound.allowed_networks: expected a list of networks",
        ),
        ("allowed_networks", "localhost", "outbound.allowed_networks: expected"),
        ("blocked_networks", "10.0.0.0/33", "outbound.blocked_networks: expected"),
        ("max_fetches", "many", "outbound.max_fetches: expected a number of fetches"),
        ("max_fetches", "-1", "outbound.max_fetches: expected"),
        ("max_response_bytes", "lots", "outbound.max_response_bytes: expected a size"),
        ("max_total_bytes", "-5", "outbound.max_total_bytes: expected a size"),
        ("max_body_bytes", "1XB", "outbound.max_body_bytes: expected a size"),
        ("max_redirects", "1.5", "outbound.max_redirects: expected"),
        ("connect_timeout", "0s", "outbound.connect_timeout: expected a duration"),
        ("read_timeout", "forever", "outbound.read_timeout: expected a duration"),
        (
            "ca_bundle",
            "/nonexistent/ca.pem",
            "outbound.ca_bundle: expected the path of an existing",
        ),
    ],
)
def test_bad_keys_and_values_name_the_key(key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(None, {f"EDGEFN_OUTBOUND_{key.upper()}": value})
    assert says in str(caught.value), str(caught.value)


def test_a_bad_list_in_the_config_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"outbound\.allowed_networks: expected a list"):
        load_policy(config(tmp_path, "[outbound]\nallowed_networks = [1]\n"), {})


def test_the_section_is_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[outbund\] \(allowed: .*outbound\)"):
        load_policy(config(tmp_path, "[outbund]\nmax_fetches = 1\n"), {})


def test_the_policy_pickles_for_the_workers() -> None:
    policy = load_policy(None, {"EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32"})
    copy = pickle.loads(pickle.dumps(policy))
    assert copy.outbound == policy.outbound
    assert copy.outbound.allowed_networks == (ipaddress.ip_network("127.0.0.1/32"),)


# -- the README says what the code does -----------------------------------------------------

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readmes_manifest_example_parses_and_allows_its_origin() -> None:
    section = README.split("### The manifest (`edgefn.toml`)")[1]
    example = section.split("```toml\n")[1].split("```")[0]
    manifest = parse_manifest(example)
    assert manifest.outbound_hosts()[-1] == "http://127.0.0.1:9000"
    AllowedHosts.parse(manifest.outbound_hosts()).check("https://bucket.s3.amazonaws.com/a.jpg")


def test_the_readmes_outbound_table_lists_every_key_and_blocked_network() -> None:
    section = README.split("### Outbound HTTP (`[outbound]`)")[1].split("\n### ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    assert sorted(key.strip(" `") for key, _ in rows) == sorted(OUTBOUND_KEYS)
    assert all(
        variable.strip(" `") == f"EDGEFN_OUTBOUND_{key.strip(' `').upper()}"
        for key, variable in rows
    )
    listed = section.split("**Blocked networks.**")[1]
    assert all(f"`{network}`" in listed for network in DEFAULT_BLOCKED)
