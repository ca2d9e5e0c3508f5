"""Prometheus metrics, in multiprocess mode so every worker is counted.

`Metrics(directory)` is one worker's set of families, passed to the apps and the
function table that update it. prometheus_client chooses where values live from
a module global it sets at import from `PROMETHEUS_MULTIPROC_DIR`; this module
is the one place that sets both, so nothing depends on import order.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = ["Metrics", "forget_worker", "reset_metrics"]

log = logging.getLogger("edgefn.gateway")

Family = TypeVar("Family", Counter, Histogram)

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def reset_metrics(directory: Path) -> None:
    """An empty metrics directory: counters start from zero each run (the parent
    calls it before any worker starts)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def forget_worker(directory: Path, pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class Metrics:
    """The gateway's metric families, their values kept in `directory` (one file
    per worker and type), which `render()` reads for every worker at once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Read by each value when it is created: one store per process.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        _values.ValueClass = _values.MultiProcessValue()  # type: ignore[no-untyped-call]
        # Each family's labelled children, as `child()` looked them up.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        # registry=None: in multiprocess mode the collector reads the files, and a
        # second Metrics in one process (tests) must not clash in the default one.
        self.requests = Counter(
            "edgefn_requests",
            "Function requests by status and outcome.",
            ["function", "status", "outcome"],
            registry=None,
        )
        self.queue = Histogram(
            "edgefn_queue_seconds",
            "Time waiting for a slot.",
            ["function"],
            buckets=_SECONDS,
            registry=None,
        )
        self.instantiate = Histogram(
            "edgefn_instantiate_seconds",
            "Time creating the sandbox instance.",
            ["function"],
            buckets=_SECONDS,
            registry=None,
        )
        self.execute = Histogram(
            "edgefn_execute_seconds",
            "Time running the function.",
            ["function"],
            buckets=_SECONDS,
            registry=None,
        )
        self.fuel = Counter("edgefn_fuel_consumed", "Fuel units used.", ["function"], registry=None)
        self.pixels = Counter(
            "edgefn_image_pixels",
            "Pixels decoded, produced or stamped.",
            ["function"],
            registry=None,
        )
        # By status class ("2xx".."5xx") or failure kind ("not_allowed", "timeout",
        # "too_large", "failed"): never the URL or host, which functions choose.
        self.outbound = Counter(
            "edgefn_outbound_requests",
            "Outbound HTTP requests (redirect hops included) by status class or failure.",
            ["function", "status_class"],
            registry=None,
        )
        self.outbound_seconds = Histogram(
            "edgefn_outbound_seconds",
            "Time a request spent on outbound HTTP.",
            ["function"],
            buckets=_SECONDS,
            registry=None,
        )
        self.outbound_bytes = Counter(
            "edgefn_outbound_bytes",
            "Response body bytes received by outbound HTTP.",
            ["function"],
            registry=None,
        )
        # The edge cache (`_cache.py`): what answered each function request, by the
        # `X-Edgefn-Cache` value; requests that waited for another's run; and each
        # tier's own lookups, stores, evictions and size.
        self.cache = Counter(
            "edgefn_cache_requests",
            "Function requests by cache status (HIT, MISS, STALE, REVALIDATED, BYPASS).",
            ["function", "status"],
            registry=None,
        )
        self.coalesced = Counter(
            "edgefn_cache_coalesced",
            "Cache misses that waited for another request's run of the function.",
            ["function"],
            registry=None,
        )
        self.cache_tier = Counter(
            "edgefn_cache_tier_events",
            "Cache tier lookups (hit, miss), stores and evictions.",
            ["tier", "event"],
            registry=None,
        )
        self.cache_memory_bytes = Gauge(
            "edgefn_cache_memory_bytes",
            "Bytes in the workers' memory tiers.",
            multiprocess_mode="livesum",
            registry=None,
        )
        # One disk tier per node, which every worker measures: the largest report.
        self.cache_disk_bytes = Gauge(
            "edgefn_cache_disk_bytes",
            "Bytes in the node's disk tier.",
            multiprocess_mode="livemax",
            registry=None,
        )
        # Key-value stores: operations by result ("ok", "miss", or a failure kind
        # such as "quota_exceeded"), never the store's keys, which functions choose.
        self.kv = Counter(
            "edgefn_kv_operations",
            "Key-value store operations by operation and result.",
            ["function", "operation", "result"],
            registry=None,
        )
        self.kv_seconds = Histogram(
            "edgefn_kv_seconds",
            "Time a request spent in key-value store operations.",
            ["function"],
            buckets=_SECONDS,
            registry=None,
        )
        # Bytes each function keeps in its stores: read from the database when
        # scraped (every gateway sharing it reports the same), not kept per worker.
        self.kv_stored: Callable[[], dict[str, int]] | None = None
        self.in_flight = Gauge(
            "edgefn_in_flight",
            "Requests running.",
            ["function"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.queued = Gauge(
            "edgefn_queued",
            "Requests waiting for a slot.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.deploys = Counter("edgefn_deploys", "Versions deployed.", ["function"], registry=None)
        self.activations = Counter(
            "edgefn_activations",
            "Versions activated by rollback or roll-forward.",
            ["function"],
            registry=None,
        )
        self.aot = Counter(
            "edgefn_aot_cache", "AOT artifact loads by result.", ["result"], registry=None
        )
        # Per worker (a `pid` label each): after a change, every worker of every
        # gateway should show the same versions within a second.
        self.serving = Gauge(
            "edgefn_serving_version",
            "The version of each function a worker serves (0: deleted).",
            ["function"],
            multiprocess_mode="liveall",
            registry=None,
        )
        self.registry_up = Gauge(
            "edgefn_registry_available",
            "1 while every worker reaches the registry; 0 while one does not (deploys fail).",
            multiprocess_mode="livemin",
            registry=None,
        )

    def child(self, family: Family, *labels: str) -> Family:
        """`family.labels(*labels)`, looked up once: on a request's path the
        lookup cost more than the increment or observation."""
        child: Family | None = self._children.get((family, labels))
        if child is None:
            child = self._children[(family, labels)] = family.labels(*labels)
        return child

    def count(self, family: Counter, *labels: str, amount: float = 1) -> None:
        """`family.labels(*labels).inc(amount)`."""
        self.child(family, *labels).inc(amount)

    def cache_event(self, event: str, tier: str, amount: int) -> None:
        """An `HttpCache` listener: its tiers' events as metrics (from any thread)."""
        if event == "bytes":
            sizes = {"memory": self.cache_memory_bytes, "disk": self.cache_disk_bytes}
            sizes[tier].set(amount)
        else:
            self.count(self.cache_tier, tier, event, amount=amount)

    def render(self) -> bytes:
        """The exposition text for every live and past worker of this gateway."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        if self.kv_stored is not None:
            registry.register(_StoredBytes(self.kv_stored))
        return bytes(generate_latest(registry))


class _StoredBytes(Collector):
    """`edgefn_kv_stored_bytes{function}`, asked of the key-value stores at scrape time."""

    def __init__(self, stored: Callable[[], dict[str, int]]) -> None:
        self._stored = stored

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "edgefn_kv_stored_bytes",
            "Bytes kept in each function's key-value stores (keys and values).",
            labels=["function"],
        )
        try:
            stored = self._stored()
        except Exception:  # noqa: BLE001 - the database is down: every other metric still counts
            log.warning("cannot read the key-value stores' sizes for /metrics", exc_info=True)
            return
        for function, size in sorted(stored.items()):
            family.add_metric([function], size)
        yield family
