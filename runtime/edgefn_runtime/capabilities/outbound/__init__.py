"""Outbound HTTP: functions fetch from what their manifest allows (`AllowedHosts`)
within what the operator allows any function (`OutboundPolicy`)."""

from ._host import OUTBOUND_IMPORT, OutboundCapability, fetch_for
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
    "OUTBOUND_IMPORT",
    "AllowedHosts",
    "HostPattern",
    "IPNetwork",
    "OutboundCapability",
    "OutboundFailure",
    "OutboundPolicy",
    "Target",
    "blocked_network_name",
    "fetch_for",
    "parse_url",
]
