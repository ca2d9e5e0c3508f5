"""Prometheus metrics, in multiprocess mode so every worker is counted.

Import only after `PROMETHEUS_MULTIPROC_DIR` is set (`server.run` does it):
prometheus_client picks its value store at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["METRICS", "Metrics", "render"]

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "edgefn_requests",
            "Function requests by status and outcome.",
            ["function", "status", "outcome"],
        )
        self.queue = Histogram(
            "edgefn_queue_seconds", "Time waiting for a slot.", ["function"], buckets=_SECONDS
        )
        self.instantiate = Histogram(
            "edgefn_instantiate_seconds",
            "Time creating the sandbox instance.",
            ["function"],
            buckets=_SECONDS,
        )
        self.execute = Histogram(
            "edgefn_execute_seconds", "Time running the function.", ["function"], buckets=_SECONDS
        )
        self.fuel = Counter("edgefn_fuel_consumed", "Fuel units used.", ["function"])
        self.pixels = Counter(
            "edgefn_image_pixels", "Pixels decoded, produced or stamped.", ["function"]
        )
        self.in_flight = Gauge(
            "edgefn_in_flight", "Requests running.", ["function"], multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            "edgefn_queued", "Requests waiting for a slot.", multiprocess_mode="livesum"
        )
        self.deploys = Counter("edgefn_deploys", "Versions deployed.", ["function"])
        self.activations = Counter(
            "edgefn_activations", "Versions activated by rollback or roll-forward.", ["function"]
        )
        self.aot = Counter("edgefn_aot_cache", "AOT artifact loads by result.", ["result"])
        # Per worker (a `pid` label each): after a change, every worker of every
        # gateway should show the same versions within a second.
        self.serving = Gauge(
            "edgefn_serving_version",
            "The version of each function a worker serves (0: deleted).",
            ["function"],
            multiprocess_mode="liveall",
        )
        self.registry_up = Gauge(
            "edgefn_registry_available",
            "1 while every worker reaches the registry; 0 while one does not (deploys fail).",
            multiprocess_mode="livemin",
        )


METRICS = Metrics()


def render() -> bytes:
    """The exposition text for every live and past worker of this gateway."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))
