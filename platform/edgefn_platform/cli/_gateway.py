"""`edgefn serve` and `edgefn dev`: running a gateway."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import click

from edgefn_runtime import Engine, default_cache_dir

from .._units import parse_size
from ..gateway import (
    Deployer,
    GatewayConfig,
    TokenError,
    deploy_directory,
    load_token,
    run,
    run_worker,
)
from ..gateway.policy import ConfigError, load_policy
from ..gateway.server import reserve_ports
from ..manifest import load_manifest
from ..registry import RegistryError, SQLiteRegistry, open_registry
from ._functions import build_function

__all__ = ["COMMANDS"]


def _listener_options(function: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option(
            "--host",
            default="0.0.0.0",
            envvar="EDGEFN_HOST",
            help="Public listener address (function traffic). [env: EDGEFN_HOST]",
        ),
        click.option(
            "--port",
            default=8080,
            envvar="EDGEFN_PORT",
            help="Public listener port; 0: any free port. [env: EDGEFN_PORT]",
        ),
        click.option(
            "--admin-host",
            default="127.0.0.1",
            envvar="EDGEFN_ADMIN_HOST",
            help="Admin API address. [env: EDGEFN_ADMIN_HOST]",
        ),
        click.option(
            "--admin-port",
            default=8081,
            envvar="EDGEFN_ADMIN_PORT",
            help="Admin API port; 0: any free port. [env: EDGEFN_ADMIN_PORT]",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command()
@_listener_options
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".edgefn-data",
    envvar="EDGEFN_DATA_DIR",
    help="Registry and artifacts; with --database-url, this gateway's caches only. "
    "[env: EDGEFN_DATA_DIR]",
)
@click.option(
    "--database-url",
    default=None,
    envvar="EDGEFN_DATABASE_URL",
    show_default=False,
    help="postgresql://user:password@host:5432/db: a registry several gateways share; "
    "default: the embedded SQLite registry in the data directory. [env: EDGEFN_DATABASE_URL]",
)
@click.option(
    "--workers",
    default=lambda: len(os.sched_getaffinity(0)),
    show_default="one per CPU",
    type=click.IntRange(1, 64),
    envvar="EDGEFN_WORKERS",
    help="Worker processes; each serves every function. [env: EDGEFN_WORKERS]",
)
@click.option(
    "--token",
    envvar="EDGEFN_TOKEN",
    default=None,
    show_default=False,
    help="Admin API token; generated and stored in the data directory if unset. "
    "[env: EDGEFN_TOKEN]",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="EDGEFN_CACHE_DIR",
    show_default=False,
    help="Where compiled (AOT) artifacts are cached; default: the data directory. "
    "[env: EDGEFN_CACHE_DIR]",
)
@click.option(
    "--max-upload",
    default="100MiB",
    envvar="EDGEFN_MAX_UPLOAD",
    help="Largest deploy upload accepted. [env: EDGEFN_MAX_UPLOAD]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="EDGEFN_CONFIG",
    show_default=False,
    help="Gateway config (TOML): [defaults], [maximums], [backpressure], [observability]. "
    "[env: EDGEFN_CONFIG]",
)
@click.option(
    "--drain-timeout",
    default=30.0,
    envvar="EDGEFN_DRAIN_TIMEOUT",
    help="On SIGTERM, seconds requests in flight get to finish. [env: EDGEFN_DRAIN_TIMEOUT]",
)
@click.option(
    "--header-timeout",
    default=10.0,
    envvar="EDGEFN_HEADER_TIMEOUT",
    help="Seconds a client has to send a request's line and headers; then 408. "
    "[env: EDGEFN_HEADER_TIMEOUT]",
)
@click.option(
    "--body-timeout",
    default=30.0,
    envvar="EDGEFN_BODY_TIMEOUT",
    help="Seconds a client has to send a request's body after its headers; then 408. "
    "[env: EDGEFN_BODY_TIMEOUT]",
)
@click.option(
    "--admin-tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="EDGEFN_ADMIN_TLS_CERT",
    help="PEM certificate: serve the admin API over HTTPS. [env: EDGEFN_ADMIN_TLS_CERT]",
)
@click.option(
    "--admin-tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="EDGEFN_ADMIN_TLS_KEY",
    help="PEM private key for --admin-tls-cert. [env: EDGEFN_ADMIN_TLS_KEY]",
)
@click.option(
    "--deploy",
    "deploy_dirs",
    multiple=True,
    envvar="EDGEFN_DEPLOY",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Build and deploy this function folder at start; repeatable. "
    "[env: EDGEFN_DEPLOY, folders separated by ':']",
)
def serve(
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    data_dir: Path,
    database_url: str | None,
    workers: int,
    token: str | None,
    cache_dir: Path | None,
    max_upload: str,
    config_file: Path | None,
    drain_timeout: float,
    header_timeout: float,
    body_timeout: float,
    admin_tls_cert: Path | None,
    admin_tls_key: Path | None,
    deploy_dirs: tuple[Path, ...],
) -> None:
    """Run the gateway: public function traffic and the admin API."""
    try:
        upload_limit = parse_size(max_upload)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-upload") from None
    try:
        config = GatewayConfig(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port,
            data_dir=data_dir,
            database_url=database_url,
            workers=workers,
            token=token,
            cache_dir=cache_dir,
            max_upload=upload_limit,
            config_file=config_file,
            drain_timeout=drain_timeout,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            admin_tls_cert=admin_tls_cert,
            admin_tls_key=admin_tls_key,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        admin_token = load_token(config)  # before any deploy: an unusable token stops here
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    if config.admin_exposed_in_clear:
        click.echo(
            f"Warning: the admin API listens on {admin_host} without TLS: the token and "
            "deploys cross the network in clear text. Keep --admin-host on 127.0.0.1, or "
            "set --admin-tls-cert and --admin-tls-key.",
            err=True,
        )
    try:
        load_policy(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        registry = open_registry(config.database_url, config.data_dir)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    if deploy_dirs:
        with Engine(cache_dir=config.aot_cache_dir) as engine:
            deployer = Deployer(registry, engine, config.data_dir)
            for directory in deploy_dirs:
                result = build_function(directory, quiet_if_cached=True)
                version = deploy_directory(deployer, directory, result.path)
                url = config.public_url() + version.route
                click.echo(f"Deployed {version.function} version {version.version} at {url}")
    registry.close()
    click.echo(
        f"Serving functions on {config.public_url()} with {workers} worker(s); admin API "
        f"on {'https' if admin_tls_cert else 'http'}://{admin_host}:{admin_port} "
        f"(token in {_token_source(config)}); registry: {registry.location}"
    )
    for directory in deploy_dirs:
        manifest = load_manifest(directory.resolve())
        url = config.public_url() + manifest.route
        if manifest.assets and (directory / manifest.assets / "sample.jpg").is_file():
            click.echo(f"Try: curl -o out.jpg '{url}/sample.jpg?w=400'")
        else:
            click.echo(f"Try: curl {url}/")
    run(config, token=admin_token)


def _token_source(config: GatewayConfig) -> str:
    return "EDGEFN_TOKEN" if config.token else str(config.data_dir / "admin-token")


@click.command()
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@click.option(
    "--port", default=8080, envvar="EDGEFN_PORT", help="Port to serve on; 0: any free port."
)
def dev(directory: Path, port: int) -> None:
    """Serve the function in DIRECTORY locally; rebuild and redeploy on every change."""
    from watchfiles import watch  # imported here: only `dev` needs it

    directory = directory.resolve()
    with tempfile.TemporaryDirectory(prefix="edgefn-dev-") as data_dir:
        config = GatewayConfig(
            host="127.0.0.1",
            port=port,
            admin_port=0,
            data_dir=Path(data_dir),
            token="dev",
            cache_dir=default_cache_dir(),
        )
        # Held until dev ends; a --port 0 becomes the port the kernel picked.
        config, _held = reserve_ports(config)
        registry = SQLiteRegistry(config.data_dir)
        engine = Engine(cache_dir=config.aot_cache_dir)
        deployer = Deployer(registry, engine, config.data_dir)

        def redeploy() -> None:
            try:
                result = build_function(directory, quiet_if_cached=True)
                version = deploy_directory(deployer, directory, result.path)
            except Exception as exc:  # keep watching: the next save may fix it
                click.secho(f"error: {exc}", fg="red", err=True)
                return
            click.secho(
                f"Serving {version.function} version {version.version} at "
                f"{config.public_url()}{version.route}",
                fg="green",
            )

        redeploy()
        # The worker dies with this process however it ends (its lifeline); on
        # SIGTERM, as on Ctrl-C, this process stops it and removes the data first.
        signal.signal(signal.SIGTERM, _interrupt)
        worker = multiprocessing.get_context("spawn").Process(
            target=run_worker, args=(config, "dev"), kwargs={"supervisor": os.getpid()}
        )
        worker.start()
        click.echo(f"Watching {directory} for changes (Ctrl-C to stop)")
        try:
            for _changes in watch(
                directory,
                watch_filter=lambda _c, p: "/.edgefn/" not in p and "__pycache__" not in p,
            ):
                click.echo("Change detected; rebuilding ...")
                redeploy()
        except KeyboardInterrupt:
            pass
        finally:
            worker.terminate()
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
            engine.close()
            registry.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


COMMANDS = [serve, dev]
