"""Outbound HTTP: what a function may reach (its manifest), what any may (the operator's)."""

from ._policy import (
    DEFAULT_BLOCKED,
    AllowedHosts,
    HostPattern,
    IPNetwork,
    OutboundFailure,
    OutboundPolicy,
    Target,
    blocked_network_name,
    parse_url,
)

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
