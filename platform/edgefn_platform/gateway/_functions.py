"""The worker's view of the registry: loaded sandboxes by route, kept fresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgefn_runtime import WARM_UP_HEADER, Limits, Request, Sandbox, SandboxError
from edgefn_runtime.capabilities import RequestStreamCapability

from ..manifest import Manifest
from ..registry import FunctionRecord, RegistryUnavailable, SecretRecord
from ._deploy import Deployer
from ._metrics import Metrics
from ._rollout import ServingBoard
from .policy import EffectiveLimits, Policy

__all__ = ["FunctionTable", "LiveFunction", "PurgesListener", "SecretsListener", "warm_up"]

log = logging.getLogger("edgefn.gateway")


@dataclass(frozen=True)
class LiveFunction:
    """The active version of a function, loaded and ready to invoke."""

    name: str
    version: int
    route: str
    sandbox: Sandbox
    limits: Limits
    concurrency: int = 16
    # Its entries' namespace in the edge cache: this activation of this version
    # (a rollback to it starts afresh). None: the function opted out (`cache = false`).
    cache_id: str | None = None
    # When the version was made: a function deleted and made again numbers its
    # versions from 1 again, and must not be taken for the one before.
    created_at: float = 0.0

    @property
    def streams_body(self) -> bool:
        """Whether it reads request bodies as they arrive (`stream_request_body`)."""
        return RequestStreamCapability.name in self.sandbox.grants


# Told every function's purges (path prefix, time) whenever the registry changed.
PurgesListener = Callable[[dict[str, list[tuple[str, float]]]], None]

# Told every stored secret (encrypted) whenever the registry changed.
SecretsListener = Callable[[list[SecretRecord]], None]

_WARM_UP = Request("GET", "/", headers=[(WARM_UP_HEADER, "1")])


def warm_up(sandbox: Sandbox, limits: Limits) -> None:
    """One throwaway request before a version takes traffic: its first instances
    map the memory image into pool slots, so the first real request after a
    deploy or restart is as fast as the tenth. It leaves no trace but the time."""
    try:
        sandbox.invoke(_WARM_UP, limits)
    except SandboxError:
        pass


class FunctionTable:
    """Routes by longest prefix to the active version of each function.

    A background thread compares the registry's change token whenever the
    registry announces a change (PostgreSQL) or every `refresh_seconds`
    (SQLite); a changed version is fetched and loaded (from the AOT cache)
    before the table is swapped, so requests never wait for a load and
    in-flight requests finish on the version they started with. While the
    registry is unreachable, the table keeps what it has and
    `registry_available` is false. After each change it reports what it serves
    on the `board`, which the admin API reads to answer once a change is live.
    The registry's purges go to `on_purges` before that report, so a purge, too,
    is applied by every worker when the admin call returns; so are the
    registry's secrets, given to `on_secrets`.
    """

    def __init__(
        self,
        deployer: Deployer,
        metrics: Metrics,
        board: ServingBoard,
        refresh_seconds: float = 0.25,
        policy: Policy | None = None,
        on_purges: PurgesListener | None = None,
        on_secrets: SecretsListener | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self._on_purges = on_purges
        self._on_secrets = on_secrets
        self.metrics = metrics
        self.board = board
        self.ready = threading.Event()
        self.registry_available = True
        self.deployer = deployer
        self.registry = deployer.registry
        self.engine = deployer.engine
        self.refresh_seconds = refresh_seconds
        self._routes: dict[str, LiveFunction] = {}
        self._token: object = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def match(self, path: str) -> tuple[LiveFunction, str] | None:
        """The function owning `path` and the path relative to its route."""
        routes = self._routes
        prefix = path.rstrip("/") or "/"
        while True:
            function = routes.get(prefix)
            if function is not None:
                relative = path[len(prefix) :] if prefix != "/" else path
                return function, relative if relative.startswith("/") else "/" + relative
            if prefix == "/":
                return None
            prefix = prefix.rsplit("/", 1)[0] or "/"

    def functions(self) -> list[LiveFunction]:
        return list(self._routes.values())

    def refresh(self, force: bool = False) -> int:
        """Load what changed in the registry since the last call; the registry
        generation the table now serves. A version this process has just deployed
        comes loaded from the deployer (`take_loaded`), not loaded a second time."""
        with self._lock:
            token = self.registry.change_token()
            if token == self._token and not force:
                return int(token)
            if self._on_purges is not None:
                # Read after the token, so at least as new as the generation this
                # worker reports below; applied before any (slow) load.
                self._on_purges(self.registry.purges())
            if self._on_secrets is not None:
                self._on_secrets(self.registry.secrets())
            current = {f.name: f for f in self._routes.values()}
            routes = {}
            failed = {}
            for record in self.registry.functions():
                function = current.get(record.name)
                active = record.active
                if function is not None and (function.version, function.created_at) == (
                    active.version,
                    active.created_at,
                ):
                    # Same version: only its limits may have changed (edgefn limits),
                    # or it was activated again (a new cache namespace).
                    effective = self.effective(record)
                    function = replace(
                        function,
                        limits=effective.limits,
                        concurrency=effective.concurrency,
                        cache_id=_cache_id(record),
                    )
                else:
                    try:
                        function = self._load(record)
                    except Exception:
                        # Keep serving what this worker has; the next change retries.
                        log.exception(
                            "cannot load %s version %s", record.name, record.active.version
                        )
                        failed[record.name] = record.active.version
                        if function is None:
                            continue
                routes[function.route] = function
            self._routes = routes
            self._token = token
            # Under the lock: reports go out in the order of their generations.
            serving = {f.name: f.version for f in routes.values()}
            try:
                self.board.publish(int(token), serving, failed)
            except OSError:
                # Served all the same; an admin call waiting on this report times
                # out as 504 `not_live`, which names this worker.
                log.exception("cannot report what this worker serves")
        for name in current.keys() - serving.keys():
            self.metrics.serving.labels(name).set(0)  # multiprocess series outlive .remove()
        for name, version in serving.items():
            self.metrics.serving.labels(name).set(version)
        return int(token)

    def effective(self, record: FunctionRecord) -> EffectiveLimits:
        """The limits `record`'s active version runs with under the operator's policy."""
        manifest = Manifest.from_dict(record.active.manifest)
        return self.policy.resolve(manifest.limits, record.overrides)

    def _load(self, record: FunctionRecord) -> LiveFunction:
        version = record.active
        sandbox = self.deployer.take_loaded(version)  # loaded by a deploy, here
        if sandbox is None:
            manifest = Manifest.from_dict(version.manifest)
            wasm, assets = self.deployer.local_files(version)
            hits = self.engine.aot.hits
            sandbox = self.engine.load(
                wasm,
                env=manifest.env,
                assets=assets,
                reuse=manifest.reuse,
                sha256=version.sha256,  # verified when it was stored or fetched
                grants=self.deployer.grants(version),
            )
            self.metrics.aot.labels("hit" if self.engine.aot.hits > hits else "miss").inc()
        log.info("loaded %s version %s at %s", record.name, version.version, record.route)
        effective = self.effective(record)
        warm_up(sandbox, effective.limits)
        return LiveFunction(
            record.name,
            version.version,
            record.route,
            sandbox,
            effective.limits,
            effective.concurrency,
            _cache_id(record),
            version.created_at,
        )

    def start(self) -> None:
        """Load every active version in the background; `ready` is set once all are."""
        self._thread = threading.Thread(target=self._run, name="edgefn-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.ready.is_set() and not self._stopped.is_set():
            try:
                self.refresh()
                self.ready.set()
            except Exception:
                log.exception("loading the registry failed; retrying")
                self._stopped.wait(1.0)
        self._set_available(True)
        while not self._stopped.is_set():
            try:
                if self.registry.wait_for_change(self.refresh_seconds):
                    self.refresh()
            except RegistryUnavailable as exc:
                if self.registry_available:
                    log.warning("%s", exc)
                    self._set_available(False)
                self._stopped.wait(1.0)
                continue
            except Exception:  # the next change retries; serving goes on meanwhile
                log.exception("registry refresh failed")
            if not self.registry_available:
                log.warning("the registry is reachable again; caught up with its changes")
                self._set_available(True)

    def _set_available(self, available: bool) -> None:
        self.registry_available = available
        self.metrics.registry_up.set(1 if available else 0)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


def _cache_id(record: FunctionRecord) -> str | None:
    """The edge cache namespace of the record's active version, as activated."""
    if not Manifest.from_dict(record.active.manifest).cache:
        return None
    return f"{record.name}\0{record.active.version}\0{record.updated_at!r}"
