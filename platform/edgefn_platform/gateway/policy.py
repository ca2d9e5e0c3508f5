"""The operator's limit policy: defaults, maximums, backpressure.

Effective limits of a function = its manifest's request, filled from the
defaults, replaced by any live override, clamped to the maximums. Loaded from a
gateway config file (`edgefn serve --config gateway.toml`) and `EDGEFN_*`
variables, the variables winning:

    [defaults]                 EDGEFN_DEFAULTS_MEMORY=...
    memory = "64MiB"
    [maximums]                 EDGEFN_MAXIMUMS_FUEL=...
    fuel = 5e10
    [backpressure]             EDGEFN_BACKPRESSURE_QUEUE_WAIT=...
    global_concurrency = 64
    [outbound]                 EDGEFN_OUTBOUND_ALLOWED_NETWORKS=127.0.0.1/32,::1/128
    allowed_networks = ["127.0.0.1/32"]
    [cache]                    EDGEFN_CACHE_MEMORY=256MiB
    memory = "64MiB"
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgefn_runtime import EdgefnError, Limits
from edgefn_runtime.cache import CacheConfig
from edgefn_runtime.capabilities.outbound import DEFAULT_BLOCKED, OutboundPolicy

from .._units import format_size, parse_count, parse_duration, parse_size
from ..manifest import LIMIT_PARSERS
from ..manifest import parse_limits as manifest_limits
from ._cores import available_cores

__all__ = [
    "CACHE_KEYS",
    "LIMIT_KEYS",
    "OUTBOUND_KEYS",
    "ConfigError",
    "EffectiveLimits",
    "Policy",
    "load_policy",
]

LIMIT_KEYS = tuple(LIMIT_PARSERS)
_SIZES = {"memory", "max_body", "max_response", "max_log", "max_kv_value", "max_kv_store"}

DEFAULTS: dict[str, Any] = {f.name: getattr(Limits(), f.name) for f in fields(Limits)}
MAXIMUMS: dict[str, Any] = {
    "memory": 1024 * 2**20,
    "fuel": 50_000_000_000,
    "timeout": 30.0,
    "max_body": 100 * 2**20,
    "max_response": 100 * 2**20,
    "max_log": 2**20,
    "max_image_pixels": 100_000_000,
    # Cloudflare KV's value and namespace sizes.
    "max_kv_value": 25 * 2**20,
    "max_kv_store": 1024 * 2**20,
    "max_kv_keys": 10_000_000,
    "max_kv_ops": 100_000,
    "concurrency": 256,
}


def default_limits() -> dict[str, Any]:
    """What a function gets when neither its manifest nor the operator says.

    `concurrency` (per function, per worker) is the cores this process may use.
    Fairness demotes a long request's thread to nice 19 (see `_fairness.py`),
    but a demoted thread still gets a share of a core, its first 20 ms run at
    the normal priority and its host work holds the worker's GIL, so every
    hostile request in flight costs its neighbours a little. Measured with
    tests/test_fairness.py on the 2-core reference machine (`--workers 2`, no
    CAP_SYS_NICE, 20 clients hammering every hostile route; a healthy
    function's p99 under that against its solo p99): concurrency 16, the old
    default, 7.4x; 2, the cores, 2.1-2.9x over 9 runs (median 2.4x); 1,
    1.7-2.1x over 3 runs, but it queues a function's second request in a
    worker behind its first, and already 2 instead of 16 lowered
    bench/gateway.py's `reuse` throughput under 50 connections (0.20-0.29x
    FastAPI's against 0.29-0.36x, 3 runs each). A function whose requests
    mostly wait is given more through its manifest or `edgefn limits`.
    """
    return DEFAULTS | {"concurrency": available_cores()}


class ConfigError(EdgefnError, ValueError):
    """The gateway config file or an `EDGEFN_*` variable is wrong; says which key."""

    code = "invalid_config"
    status = 400


def describe(key: str, value: Any) -> str:
    """A limit value as people write it."""
    if key in _SIZES:
        return format_size(int(value))
    if key == "timeout":
        return f"{value:g} s"
    return f"{int(value):,}"


@dataclass(frozen=True)
class EffectiveLimits:
    """What a function runs with, where each value came from, and what was clamped."""

    limits: Limits
    concurrency: int
    sources: dict[str, str]
    values: dict[str, Any]
    warnings: list[str]


@dataclass
class Policy:
    defaults: dict[str, Any] = field(default_factory=default_limits)
    maximums: dict[str, Any] = field(default_factory=lambda: dict(MAXIMUMS))
    global_concurrency: int = 64
    queue_length: int = 128
    queue_wait: float = 1.0
    # Request body bytes a worker buffers at once, all requests together.
    body_budget: int = 256 * 2**20
    usage_header: bool = False
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def resolve(
        self, requested: Mapping[str, Any], overrides: Mapping[str, Any]
    ) -> EffectiveLimits:
        values, sources, warnings = {}, {}, []
        for key in LIMIT_KEYS:
            if key in overrides:
                value, source = overrides[key], "override"
            elif key in requested:
                value, source = requested[key], "manifest"
            else:
                value, source = self.defaults[key], "default"
            maximum = self.maximums[key]
            if value > maximum:
                warnings.append(
                    f"{key}: {describe(key, value)} asked for ({source}), above the "
                    f"maximum of {describe(key, maximum)}, which applies"
                )
                value, source = maximum, "maximum"
            values[key], sources[key] = value, source
        limits = Limits(**{k: v for k, v in values.items() if k != "concurrency"})
        return EffectiveLimits(limits, int(values["concurrency"]), sources, values, warnings)


def parse_limits(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Parse `key = value` limits as a manifest's, raising `ConfigError` naming `where`."""
    problems: list[str] = []
    parsed = manifest_limits(dict(table), where, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return parsed


def load_policy(path: Path | None, environ: Mapping[str, str] = os.environ) -> Policy:
    """The policy from the config file at `path` (if any) and `EDGEFN_*` variables."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{sorted(unknown)[0]}] (allowed: {', '.join(_SECTIONS)})"
        )
    sections = {name: dict(data.get(name, {})) for name in _SECTIONS}
    for name, table in sections.items():
        prefix = f"EDGEFN_{name.upper()}_"
        for variable, value in environ.items():
            if variable.startswith(prefix) and variable not in _NOT_POLICY:
                table[variable.removeprefix(prefix).lower()] = value
    policy = Policy()
    policy.defaults.update(parse_limits(sections["defaults"], "defaults"))
    policy.maximums.update(parse_limits(sections["maximums"], "maximums"))
    backpressure = sections["backpressure"]
    for key in set(backpressure) - {
        "global_concurrency",
        "queue_length",
        "queue_wait",
        "body_budget",
    }:
        raise ConfigError(
            f"backpressure.{key}: unknown key (allowed: global_concurrency, "
            "queue_length, queue_wait, body_budget)"
        )
    try:
        policy.global_concurrency = parse_count(backpressure.get("global_concurrency", 64))
        policy.queue_length = parse_count(backpressure.get("queue_length", 128))
        policy.queue_wait = parse_duration(backpressure.get("queue_wait", "1s"))
        policy.body_budget = parse_size(backpressure.get("body_budget", "256MiB"))
    except ValueError as exc:
        raise ConfigError(f"backpressure: {exc}") from None
    usage = sections["observability"].get("usage_header", False)
    policy.usage_header = usage is True or str(usage).lower() in ("1", "true", "yes")
    for key in LIMIT_KEYS:  # a lowered maximum lowers the default with it
        policy.defaults[key] = min(policy.defaults[key], policy.maximums[key])
    policy.outbound = parse_outbound(sections["outbound"])
    policy.cache = parse_cache(sections["cache"])
    return policy


def parse_cache(table: Mapping[str, Any]) -> CacheConfig:
    """The `[cache]` section; each mistake a ConfigError naming `cache.KEY`."""
    return CacheConfig(**_parse_section("cache", table, CACHE_KEYS))


def parse_outbound(table: Mapping[str, Any]) -> OutboundPolicy:
    """The `[outbound]` section; each mistake a ConfigError naming `outbound.KEY`.

    `blocked_networks` adds to the default blocked networks, never replaces
    them: an operator who blocks one more range must not unblock loopback.
    """
    values = _parse_section("outbound", table, OUTBOUND_KEYS)
    if "blocked_networks" in values:
        added = [n for n in values["blocked_networks"] if n not in DEFAULT_BLOCKED]
        values["blocked_networks"] = DEFAULT_BLOCKED + tuple(added)
    return OutboundPolicy(**values)


def _parse_section(
    name: str, table: Mapping[str, Any], keys: Mapping[str, tuple[Callable[[Any], Any], str]]
) -> dict[str, Any]:
    """A section's values parsed by `keys` (key -> (parser, what it accepts));
    each mistake a ConfigError naming `name.KEY`."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(f"{name}.{key}: unknown key (allowed: {', '.join(keys)})")
        parse, accepts = keys[key]
        try:
            values[key] = parse(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}.{key}: expected {accepts}, got {value!r} ({exc})") from None
    return values


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of CIDR networks, or one comma-separated string of them (variables)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    networks = []
    for text in value:
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    return tuple(networks)


def _ca_bundle(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("not a path")
    if not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return str(Path(value).resolve())


_SECTIONS = ("defaults", "maximums", "backpressure", "observability", "cache", "outbound")
# `[outbound]` key -> (parser, what it accepts).
OUTBOUND_KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "allowed_networks": (_networks, 'a list of networks such as ["127.0.0.1/32", "::1/128"]'),
    "blocked_networks": (_networks, 'a list of networks such as ["203.0.113.0/24"]'),
    "max_fetches": (parse_count, "a number of fetches such as 16"),
    "max_response_bytes": (parse_size, 'a size such as "10MiB"'),
    "max_total_bytes": (parse_size, 'a size such as "32MiB"'),
    "max_body_bytes": (parse_size, 'a size such as "1MiB"'),
    "max_redirects": (parse_count, "a number of redirects such as 5"),
    "connect_timeout": (parse_duration, 'a duration such as "5s"'),
    "read_timeout": (parse_duration, 'a duration such as "10s"'),
    "ca_bundle": (_ca_bundle, "the path of an existing PEM file of CA certificates"),
}


def _switch(value: Any) -> bool:
    """A boolean, or its spelling in a variable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("not true or false")


def _directory(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("not a path")
    return Path(value).resolve()


# Variables that look like a section's but are `edgefn serve` options:
# EDGEFN_CACHE_DIR is `--cache-dir`, where compiled components are kept (it was
# that before the edge cache existed); the edge cache's `dir` is set in the file.
_NOT_POLICY = frozenset({"EDGEFN_CACHE_DIR"})
# `[cache]` key -> (parser, what it accepts).
CACHE_KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "enabled": (_switch, "true or false"),
    "memory": (parse_size, 'a size such as "64MiB" (per worker; 0 turns the tier off)'),
    "disk": (parse_size, 'a size such as "1GiB" (per node; 0 turns the tier off)'),
    "dir": (_directory, "a directory path (default: <data-dir>/cache)"),
    "max_object": (parse_size, 'a size such as "16MiB"'),
}
