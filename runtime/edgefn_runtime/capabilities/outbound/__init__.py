"""Outbound HTTP: functions fetch from the hosts their manifest declares."""

from ._host import OUTBOUND_IMPORT, OutboundCapability, fetch_for
from ._policy import AllowedHosts, OutboundFailure, OutboundPolicy, Target

__all__ = [
    "OUTBOUND_IMPORT",
    "AllowedHosts",
    "OutboundCapability",
    "OutboundFailure",
    "OutboundPolicy",
    "Target",
    "fetch_for",
]
