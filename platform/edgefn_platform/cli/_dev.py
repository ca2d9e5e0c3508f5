"""`edgefn dev`: serve function folders locally; an edit is live at the next request."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from secrets import token_urlsafe

import click

from edgefn_runtime import Engine, default_cache_dir
from edgefn_runtime.capabilities import installed

from .._printable import printable_lines
from ..dev import (
    LOOPBACK,
    SECRETS_FILE,
    DevError,
    DevSession,
    LogTail,
    kv_dir,
    parse_secret,
    prepare_runner,
    write_policy,
)
from ..gateway import Deployer, GatewayConfig, run_worker
from ..gateway.server import announce, reserved_ports
from ..manifest import load_manifest
from ..registry import SQLiteRegistry
from ..secrets import Cipher, generate_key

__all__ = ["COMMANDS"]

_STOPS = {signal.SIGINT, signal.SIGTERM}


@click.command()
@click.argument(
    "directories",
    nargs=-1,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--port",
    default=8080,
    envvar="EDGEFN_PORT",
    type=click.IntRange(0, 65535),
    help="Port to serve on; 0: any free port. [env: EDGEFN_PORT]",
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="A secret for the functions that declare NAME: the value of the variable NAME "
    "in this environment, or VALUE (which `ps` and your shell's history show); "
    f"repeatable. Also read from each function's {SECRETS_FILE} (git-ignored with .edgefn/).",
)
@click.option("--cache", is_flag=True, help="Turn the edge cache on (off in dev by default).")
@click.option(
    "--prepare",
    is_flag=True,
    help="Make the dev runner(s) the functions need (build and compile, ~30 s once) and "
    "exit: for an image or a CI step, before `edgefn dev` starts.",
)
def dev(
    directories: tuple[Path, ...], port: int, secrets: tuple[str, ...], cache: bool, prepare: bool
) -> None:
    """Serve the functions in DIRECTORIES (default: .), each on its route, in the
    sandbox; every saved change is live at the next request, without a build."""
    try:
        given = dict(parse_secret(s, "--secret", os.environ) for s in secrets)
    except DevError as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from None
    folders = list(dict.fromkeys(d.resolve() for d in directories or (Path("."),)))
    if prepare:
        with Engine(cache_dir=default_cache_dir(), capabilities=installed(dev=True)) as engine:
            for folder in folders:
                prepare_runner(load_manifest(folder), engine, _say)
        return
    # SIGTERM (a process manager, `kill`) stops dev as Ctrl-C does, from the first
    # instruction on: its worker stopped and its port closed, exiting 0, whether
    # it was building, serving or starting.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _dev(folders, port, given, cache)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dev(folders: list[Path], port: int, secrets: dict[str, str], cache: bool) -> None:
    # Each function's key-value data in its own folder, where it outlives this run;
    # the registry, logs and snapshots in a temporary directory, removed at the end.
    kv_dirs = {load_manifest(folder).name: kv_dir(folder) for folder in folders}
    with tempfile.TemporaryDirectory(prefix="edgefn-dev-") as temp:
        data = Path(temp)
        config = GatewayConfig(
            host="127.0.0.1",
            port=port,
            admin_port=0,
            data_dir=data,
            workers=1,
            # Its own each run: the key-value data it reaches outlives the run.
            token=token_urlsafe(16),
            cache_dir=default_cache_dir(),
            config_file=write_policy(data / "gateway.toml", cache=cache),
            # Its own key each run: the secrets are stored anew at every start.
            secrets_key=generate_key(),
            dev=True,
            kv_dirs=kv_dirs,
            refresh_seconds=0.02,  # the worker's only wait between a save and serving it
            shutdown_delay=0,  # no load balancer to tell: Ctrl-C stops it at once
        )
        config.load()
        # Held until dev ends; a --port 0 becomes the port the kernel picked.
        with reserved_ports(config):
            announce(config)
            _serve(folders, config, secrets, cache)


def _serve(
    folders: list[Path], config: GatewayConfig, secrets: dict[str, str], cache: bool
) -> None:
    from watchfiles import watch  # imported here: only `dev` needs it

    registry = SQLiteRegistry(config.data_dir)  # its tables, before the worker reads them
    worker = engine = tail = None
    try:
        # Forked, not spawned: it starts with this process's imports (~2 s of a 3 s
        # start), and before this process has an engine, whose memory reservations
        # it would hold too and take time to unmap when it exits. It loads the
        # functions as they are published, dies with this process however it ends
        # (its lifeline), and on SIGTERM, as on Ctrl-C, this process stops it first.
        worker = multiprocessing.get_context("fork").Process(
            target=_worker, args=(config, os.getpid())
        )
        # A stop signal during the fork would run its handler inside the fork's own
        # hooks (logging's lock release), where the KeyboardInterrupt is ignored: dev
        # went on serving. Held until the worker is started, it is raised here.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
        engine = config.open_engine()
        deployer = Deployer(registry, engine, config.data_dir)
        cipher = Cipher(config.secrets_keys or ())
        session = DevSession(folders, config, registry, deployer, _say, secrets, cipher)
        session.publish_all()
        session.wait_all_live()
        _wait_listening(config, worker)
        tail = LogTail(registry, lambda: [f.manifest.name for f in session.functions], click.echo)
        tail.start()
        networks = ", ".join(LOOPBACK)
        stores = ", ".join(str(d) for d in (config.kv_dirs or {}).values())
        click.echo(
            f"Outbound HTTP: the hosts each manifest allows, loopback ones ({networks}) "
            f"included in dev; edge cache {'on' if cache else 'off (--cache turns it on)'}; "
            f"key-value data in {stores}; admin API for this run: "
            f"--gateway http://{config.admin_host}:{config.admin_port} --token {config.token}"
        )
        click.echo(f"Watching {', '.join(map(str, folders))} for changes (Ctrl-C to stop)")
        # A second without a change, the loop checks on the worker (never restarted).
        started = False
        for changes in watch(
            *folders, watch_filter=_watched, debounce=400, step=20, yield_on_timeout=True,
            rust_timeout=1000,
        ):  # fmt: skip
            if not worker.is_alive():
                raise DevError("the dev gateway's worker exited (see above); restart edgefn dev")
            if not started:
                # The watcher is set up by its first answer, not when the line above
                # is printed: a save in between went unseen (once in the test suite,
                # under load). What changed since the first publish is published now.
                started = True
                session.catch_up()
            session.changed(Path(path) for _change, path in changes)
    finally:
        if tail is not None:
            tail.stop()
        if worker is not None and worker.pid is not None:  # started
            worker.terminate()
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
        if engine is not None:
            engine.close()
        registry.close()


def _worker(config: GatewayConfig, supervisor: int) -> None:
    # Not this process's handlers, until its event loop takes SIGINT and SIGTERM over
    # (to drain): Ctrl-C reaches the whole process group, and this process stops the
    # worker with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # blocked around the fork
    run_worker(config, supervisor=supervisor)


def _wait_listening(config: GatewayConfig, worker: BaseProcess, timeout: float = 60) -> None:
    """Until the worker accepts connections: it listens once it has loaded and
    warmed every function, a moment after it reports them loaded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((config.host, config.port), timeout=1).close()
            return
        except OSError:
            if not worker.is_alive() or time.monotonic() > deadline:
                raise DevError("the dev gateway's worker did not start; see above") from None
            time.sleep(0.02)


def _watched(_change: object, path: str) -> bool:
    # Not the build output, nor the key-value data the functions write, in .edgefn/:
    # only the local secrets file there.
    if path.endswith(f"/{SECRETS_FILE}"):
        return True
    return "/.edgefn/" not in path and "__pycache__" not in path and "/.git/" not in path


def _say(message: str, colour: str | None) -> None:
    # Messages quote what the function's folder and its import printed: escaped.
    click.secho(printable_lines(message), fg=colour, err=colour == "red")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


COMMANDS = [dev]
