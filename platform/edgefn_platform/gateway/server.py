"""`edgefn serve`: one or more worker processes, each with both listeners.

Each worker binds the public and admin ports with SO_REUSEPORT, so the kernel
spreads connections across workers, and serves every function from the shared
registry. The call path holds the GIL, so worker processes, not threads, are
what use more than one core. The parent only supervises: it restarts a worker
that dies and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from edgefn_runtime import Engine, Limits

from ..registry import SQLiteRegistry
from ._deploy import Deployer
from ._functions import FunctionTable
from ._logs import LogSink
from .admin import create_admin_app
from .config import GatewayConfig, load_token
from .public import create_public_app

__all__ = ["Worker", "bind", "run", "run_worker"]

log = logging.getLogger("edgefn.gateway")


@dataclass
class Worker:
    """Everything one worker process serves from."""

    config: GatewayConfig
    registry: SQLiteRegistry
    engine: Engine
    table: FunctionTable
    logs: LogSink
    deployer: Deployer

    @classmethod
    def open(cls, config: GatewayConfig) -> Worker:
        registry = SQLiteRegistry(config.data_dir)
        engine = Engine(cache_dir=config.aot_cache_dir)
        deployer = Deployer(registry, engine, config.data_dir)
        defaults = Limits(max_image_pixels=config.max_image_pixels)
        table = FunctionTable(
            registry, engine, deployer.assets_dir, config.refresh_seconds, defaults
        )
        return cls(config, registry, engine, table, LogSink(registry), deployer)

    def close(self) -> None:
        self.table.stop()
        self.logs.stop()
        self.engine.close()
        self.registry.close()


class _Server(uvicorn.Server):
    # The worker handles signals once for both servers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening socket that other workers may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(config: GatewayConfig, token: str) -> None:
    """Serve both listeners in this process until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    worker = Worker.open(config)
    worker.table.start()
    worker.logs.start()
    public = create_public_app(worker.table, worker.logs)
    admin = create_admin_app(
        worker.registry,
        worker.deployer,
        worker.table,
        token,
        config.public_url(),
        config.max_upload,
    )
    servers = [
        (
            _Server(uvicorn.Config(public, log_level="warning", access_log=False)),
            bind(config.host, config.port),
        ),
        (
            _Server(uvicorn.Config(admin, log_level="warning", access_log=False)),
            bind(config.admin_host, config.admin_port),
        ),
    ]

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in servers))

    try:
        asyncio.run(main())
    finally:
        worker.close()


def run(config: GatewayConfig) -> None:
    """Run the gateway: in this process for one worker, else supervise `workers`."""
    token = load_token(config)
    # Fail fast, in the parent, when a port is taken.
    for host, port in ((config.host, config.port), (config.admin_host, config.admin_port)):
        bind(host, port).close()
    if config.workers == 1:
        run_worker(config, token)
        return
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=run_worker, args=(config, token), daemon=False)
        process.start()
        return process

    processes = [start() for _ in range(config.workers)]
    while not stopping:
        time.sleep(0.2)
        for i, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                log.warning(
                    "worker %s exited with %s; starting a new one", process.pid, process.exitcode
                )
                processes[i] = start()
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
