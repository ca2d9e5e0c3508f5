"""`edgefn serve`: one or more worker processes, each with both listeners.

Each worker binds the public and admin ports with SO_REUSEPORT, so the kernel
spreads connections across workers, and serves every function from the shared
registry. The call path holds the GIL, so worker processes, not threads, are
what use more than one core. The parent only supervises: it restarts a worker
that dies and, on SIGINT/SIGTERM, lets every worker drain and exit. Workers die
with it however it dies (see `_lifeline.py`). With one worker there is no parent:
the gateway process serves, saving the supervisor's memory (about 75 MB resident
on an idle gateway), and its death ends the gateway, for a service manager to
restart (README, "Workers").
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
import uvloop

from edgefn_runtime import EdgefnError, Engine
from edgefn_runtime.cache import HttpCache

from .._crash import WORKER_START, crash_point
from .._printable import PrintableFormatter
from ..kv import KeyValueStores, open_key_value
from ..registry import Registry, open_registry
from ..secrets import SecretValues
from ._cache import ResponseCache
from ._deploy import Deployer, recover
from ._functions import FunctionTable
from ._http import AnswerNow, guarded_protocol
from ._keylocks import KeyLocks
from ._lifeline import die_with
from ._logs import LogSink
from ._metrics import Metrics, forget_worker, reset_metrics
from ._rollout import ServingBoard
from .admin import AdminApp
from .config import GatewayConfig
from .policy import Policy
from .public import Lifecycle, PublicApp

__all__ = ["PortInUse", "Worker", "announce", "bind", "reserved_ports", "run", "run_worker"]

log = logging.getLogger("edgefn.gateway")


@dataclass
class Worker:
    """Everything one worker process serves from, each opened once per process:
    the policy and token come loaded with the config (`GatewayConfig.load`)."""

    config: GatewayConfig
    policy: Policy
    registry: Registry
    engine: Engine
    table: FunctionTable
    logs: LogSink
    deployer: Deployer
    metrics: Metrics
    board: ServingBoard
    # The edge cache this worker shares with the node's others; None: turned off.
    cache: HttpCache | None
    # The functions' key-value stores, in the registry's database.
    kv: KeyValueStores
    # The operator's secrets, decrypted, as of the table's last refresh.
    secrets: SecretValues

    @classmethod
    def open(cls, config: GatewayConfig) -> Worker:
        policy = config.loaded_policy
        metrics = Metrics(config.metrics_dir)
        cache = None
        if policy.cache.enabled:
            settings = replace(policy.cache, dir=policy.cache.dir or config.data_dir / "cache")
            cache = HttpCache(settings, listener=metrics.cache_event)
        board = ServingBoard(config.workers_dir)
        registry = open_registry(config.database_url, config.data_dir)
        secrets = SecretValues(config.secrets_cipher())
        kv = open_key_value(
            config.database_url, config.data_dir, config.kv_dirs
        )  # after the registry migrated
        metrics.kv_stored = kv.stored_bytes
        engine = config.open_engine(cache, kv, secrets.get)
        deployer = Deployer(registry, engine, config.data_dir, handoff={})
        table = FunctionTable(
            deployer, metrics, board, config.refresh_seconds, policy,
            on_purges=cache.purges.replace if cache is not None else None,
            on_secrets=secrets.update,
        )  # fmt: skip
        logs = LogSink(registry)
        return cls(
            config, policy, registry, engine, table, logs, deployer, metrics, board, cache, kv,
            secrets,
        )  # fmt: skip

    def close(self) -> None:
        self.table.stop()
        self.logs.stop()
        if self.cache is not None:
            self.cache.close()  # what is still on its way to the disk tier
        self.engine.close()
        self.kv.close()
        self.registry.close()
        self.board.forget(os.getpid())


class _Server(uvicorn.Server):
    # The worker handles signals once for both servers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, listen: bool = True, shared: bool = True) -> socket.socket:
    """A socket that other workers may bind too (SO_REUSEPORT); listening unless
    `listen` is false, in which case the server listens when it starts serving.
    `shared=False`: one no other socket may share, whatever its owner set."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Inherited by accepted connections: without it, small responses on kept-alive
    # connections wait out the peer's delayed ACK (about 40 ms each).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


class PortInUse(EdgefnError):
    """A listener's address cannot be bound: another process has the port, or
    the address is not this machine's."""

    code = "port_in_use"


@contextlib.contextmanager
def reserved_ports(config: GatewayConfig) -> Iterator[None]:
    """Both listeners' ports, bound in this process before any worker starts and
    held until the block ends.

    Fails fast when a port is taken. A port 0 becomes the one the kernel picked,
    set in `config` (loaded token and policy kept), so every worker binds that
    same port (SO_REUSEPORT). The sockets are bound, never listening: they hold
    the ports (a restarted worker finds its port still there) and the kernel
    hands them no connection.

    Each port is first bound without SO_REUSEPORT and released: Linux lets a
    process share a port with any socket of the same user that set SO_REUSEPORT,
    so the shared bind alone would succeed beside a worker of an earlier gateway
    still listening there (one whose supervisor could not end it), and the two
    gateways would split the port's connections without a word."""
    with contextlib.ExitStack() as held:
        for field, host, option in (
            ("port", config.host, "--port"),
            ("admin_port", config.admin_host, "--admin-port"),
        ):
            port = getattr(config, field)
            try:
                with bind(host, port, listen=False, shared=False) as probe:
                    port = int(probe.getsockname()[1])
                sock = held.enter_context(bind(host, port, listen=False))
            except OSError as exc:
                raise PortInUse(
                    f"cannot listen on {_url_host(host)}:{port} ({exc.strerror}); "
                    f"choose another {option} (0: any free port) or stop what uses it"
                ) from None
            setattr(config, field, int(sock.getsockname()[1]))
        yield


def announce(config: GatewayConfig) -> None:
    """Where the gateway listens, on stderr, one line each
    (`edgefn: public http://127.0.0.1:8080`): how scripts read back a port 0."""
    scheme = "https" if config.admin_tls_cert else "http"
    for name, url in (
        ("public", f"http://{_url_host(config.host)}:{config.port}"),
        ("admin", f"{scheme}://{_url_host(config.admin_host)}:{config.admin_port}"),
    ):
        print(f"edgefn: {name} {url}", file=sys.stderr, flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_worker(config: GatewayConfig, supervisor: int | None = None) -> None:
    """Serve both listeners in this process until SIGINT/SIGTERM, then drain.

    `supervisor`: the pid of the parent process that started this worker; the
    worker dies with it (SIGKILL included), before it opens a port."""
    if supervisor is not None:
        die_with(supervisor)
        crash_point(WORKER_START)
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("%(asctime)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The table logs the registry going and coming back once, not each pool retry.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    worker = Worker.open(config)
    worker.table.start()
    worker.logs.start()
    lifecycle = Lifecycle(worker.table)
    cache = None
    if worker.cache is not None:
        # A coalesced miss waits at most as long as the run it waits for may take.
        wait = worker.policy.maximums["timeout"] + worker.policy.queue_wait
        locks = None
        if worker.cache.has_disk:
            assert worker.cache.config.dir is not None
            locks = KeyLocks(worker.cache.config.dir / "locks")
        cache = ResponseCache(worker.cache, worker.metrics, wait, locks)
    public = PublicApp(worker.table, worker.logs, worker.policy, lifecycle, worker.metrics, cache)
    admin = AdminApp(worker, config.loaded_token, lifecycle)
    servers = [
        # Not listening yet: the kernel hands a port's connections to every
        # listening worker, so a worker joins only when uvicorn starts serving,
        # after the public app's startup has loaded and warmed every function.
        (_server(public, config, public.answer_now), bind(config.host, config.port, listen=False)),
        (_server(admin, config, tls=True), bind(config.admin_host, config.admin_port)),
    ]

    async def drain() -> None:
        # Report not-ready first so load balancers stop sending, then stop
        # accepting and let requests in flight finish (up to the drain timeout).
        lifecycle.draining = True
        await asyncio.sleep(config.shutdown_delay)
        for server, _ in servers:
            server.should_exit = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(drain()))
        await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in servers))

    try:
        # uvloop's event loop: its socket writes and wake-ups cost a fraction of
        # asyncio's, which showed up as 15 % of a worker's time under load.
        uvloop.run(main())
    finally:
        worker.close()
        # Requests still in flight now were cancelled when the drain timeout
        # expired; a guest still running in a pool thread (asleep in the host, say)
        # must not hold the process past it, as the pool's exit hook would.
        atexit.unregister(public.threads.shutdown)
        public.threads.shutdown(wait=False, cancel_futures=True)
        if public.threads.running():
            _exit_under_running_guest()


def _exit_under_running_guest() -> None:
    """Exit as the interpreter would, but without finalizing it: a daemon thread
    that calls back into Python while it finalizes is ended where it stands, and
    a guest asleep in the host calls back every 10 ms. Ended inside wasmtime's
    frames, it took the whole process down now and then (exit -11, SIGSEGV, once
    in a clean run of `tests/test_shutdown.py`)."""
    atexit._run_exitfuncs()  # the access log's last lines, logging's flush
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _server(
    app: Any, config: GatewayConfig, answer_now: AnswerNow | None = None, tls: bool = False
) -> _Server:
    return _Server(
        uvicorn.Config(
            app,
            ssl_certfile=config.admin_tls_cert if tls else None,
            ssl_keyfile=config.admin_tls_key if tls else None,
            log_level="warning",
            access_log=False,
            http=guarded_protocol(
                config.header_timeout, config.body_timeout, answer_now=answer_now
            ),
            timeout_graceful_shutdown=config.drain_timeout,  # type: ignore[arg-type]
        )
    )


def run(
    config: GatewayConfig,
    *,
    before_serving: Callable[[Registry, GatewayConfig], None] | None = None,
) -> None:
    """Run the gateway: in this process for one worker, else supervise `workers`.

    Loads the config (token, policy) if the caller has not, fails fast on a taken
    port, opens the registry once to clear what a crash of the last run left, and
    hands it to `before_serving` (the CLI deploys `--deploy` folders with it)
    before any worker starts."""
    config.load()  # once, here: workers get the token and policy with the config
    with reserved_ports(config):
        registry = open_registry(config.database_url, config.data_dir)
        try:
            for path in recover(registry, config.data_dir):
                log.warning("removed %s, left behind by an interrupted deploy or delete", path)
            if before_serving is not None:
                before_serving(registry, config)
        finally:
            registry.close()
        reset_metrics(config.metrics_dir)
        ServingBoard(config.workers_dir).reset()
        announce(config)
        if config.workers == 1:
            run_worker(config)
        else:
            _supervise(config)


# A worker's restart backoff: the first restart after a young death waits 0.5 s,
# each next one twice as long up to 30 s; a worker that lived a minute resets it.
_BACKOFF_FIRST, _BACKOFF_MAX, _BACKOFF_RESET = 0.5, 30.0, 60.0


def _supervise(config: GatewayConfig) -> None:
    """Start `config.workers` workers, restart any that dies, stop them all on
    SIGINT/SIGTERM."""
    board = ServingBoard(config.workers_dir)
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start() -> multiprocessing.process.BaseProcess:
        # From this (main) thread: a worker's lifeline is tied to the thread that
        # forked it (see `_lifeline.py`).
        process = context.Process(
            target=run_worker, args=(config,), kwargs={"supervisor": os.getpid()}
        )
        process.start()
        return process

    def forget(process: multiprocessing.process.BaseProcess) -> None:
        if process.pid is not None:
            forget_worker(config.metrics_dir, process.pid)
            board.forget(process.pid)

    processes: list[multiprocessing.process.BaseProcess | None] = []
    started: list[float] = []  # when each slot's worker started
    failures = [0] * config.workers  # each slot's workers in a row that died young
    restart_at = [0.0] * config.workers  # when a slot waiting out its backoff restarts
    try:
        for _ in range(config.workers):
            processes.append(start())
            started.append(time.monotonic())
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                now = time.monotonic()
                if stopping or (process is not None and process.is_alive()):
                    continue
                if process is None:
                    if now >= restart_at[i]:
                        processes[i], started[i] = start(), now
                    continue
                # One that dies young (a broken registry or config, a crash as it
                # starts) would die again: each restart in a row waits twice as
                # long, so a crash loop costs a spawn now and then, not a core.
                lived = now - started[i]
                failures[i] = failures[i] + 1 if lived < _BACKOFF_RESET else 0
                delay = (
                    min(_BACKOFF_FIRST * 2 ** min(failures[i] - 1, 16), _BACKOFF_MAX)
                    if failures[i]
                    else 0.0
                )
                log.warning(
                    "worker %s (slot %d) exited with %s after %.1f s; starting a new one in %.1f s",
                    process.pid,
                    i,
                    process.exitcode,
                    lived,
                    delay,
                )
                forget(process)
                processes[i], restart_at[i] = None, now + delay
    finally:
        # Also when the loop above fails: workers must not outlive it.
        running = [p for p in processes if p is not None]
        _stop(running, config.shutdown_delay + config.drain_timeout + 5, forget)


def _stop(
    processes: list[multiprocessing.process.BaseProcess],
    timeout: float,
    forget: Callable[[multiprocessing.process.BaseProcess], None],
) -> None:
    """SIGTERM every worker (each drains), then SIGKILL those still running after
    `timeout` seconds."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("worker %s did not drain in %.0f s; killing it", process.pid, timeout)
            process.kill()
            process.join()
        forget(process)
