"""`edgefn serve`: running a gateway."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click
from click.decorators import FC

from .._units import format_size, parse_size
from ..gateway import Deployer, GatewayConfig, deploy_directory, run
from ..manifest import load_manifest
from ..registry import Registry
from ._functions import build_function

__all__ = ["COMMANDS"]


_FIELDS = {f.name: f for f in fields(GatewayConfig)}


def _default(name: str) -> Any:
    """The config's default for the field `name`, as the option takes it."""
    field = _FIELDS[name]
    if name == "workers":
        return field.default_factory  # per machine: called by click when it is unset
    if field.default_factory is not MISSING:
        return field.default_factory()
    if name == "max_upload":
        return format_size(int(field.default))  # type: ignore[arg-type]
    return field.default


def _option(flag: str, text: str, name: str | None = None, **kwargs: Any) -> Callable[[FC], FC]:
    """A `serve` option for the config field `name` (from `flag` by default), whose
    default is the config's (written there only) and with an `EDGEFN_` variable."""
    name = name or flag.removeprefix("--").replace("-", "_")
    envvar = "EDGEFN_" + flag.removeprefix("--").replace("-", "_").upper()
    default = _default(name)
    kwargs.setdefault("show_default", default is not None)
    return click.option(
        flag, name, default=default, envvar=envvar, help=f"{text} [env: {envvar}]", **kwargs
    )


_PATH = click.Path(file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@_option("--host", "Public listener address (function traffic).")
@_option("--port", "Public listener port; 0: any free port.", type=click.IntRange(0, 65535))
@_option("--admin-host", "Admin API address.")
@_option("--admin-port", "Admin API port; 0: any free port.", type=click.IntRange(0, 65535))
@_option(
    "--data-dir", "Registry and artifacts; with --database-url, this gateway's caches only.",
    type=_PATH,
)  # fmt: skip
@_option(
    "--database-url",
    "postgresql://user:password@host:5432/db: a registry several gateways share; "
    "default: the embedded SQLite registry in the data directory.",
)
@_option(
    "--workers",
    "Worker processes; each serves every function.",
    type=click.IntRange(1, 64),
    show_default="one per CPU",
)
@_option("--token", "Admin API token; generated and stored in the data directory if unset.")
@_option(
    "--cache-dir",
    "Where compiled (AOT) artifacts are cached; default: the data directory.",
    type=_PATH,
)
@_option("--max-upload", "Largest deploy upload accepted.")
@_option(
    "--config",
    "Gateway config (TOML): [defaults], [maximums], [backpressure], [observability].",
    name="config_file",
    type=_FILE,
)
@_option(
    "--shutdown-delay",
    "On SIGTERM, seconds /readyz answers 503 before the listeners close, for load "
    "balancers to stop sending; 0 closes them at once.",
    type=click.FloatRange(min=0),
)
@_option(
    "--drain-timeout",
    "On SIGTERM, seconds requests in flight then get to finish.",
    type=float,
)
@_option(
    "--header-timeout",
    "Seconds a client has to send a request's line and headers; then 408.",
    type=float,
)
@_option(
    "--body-timeout",
    "Seconds a client has to send a request's body after its headers; then 408.",
    type=float,
)
@_option(
    "--rollout-timeout",
    "Seconds a deploy, rollback, rm or limit change waits for every worker to serve it; "
    "then it answers 504 not_live (the change stays stored).",
    type=float,
)
@_option(
    "--memory-release-after",
    "Seconds a worker must be quiet before it gives back the memory a burst of "
    "requests left (pool slots, idle instances, free heap); 0: never.",
    type=click.FloatRange(min=0),
)
@_option(
    "--secrets-key-file",
    "The secrets key(s), one per line, newest first; mode 0600. The key itself may be "
    "given in EDGEFN_SECRETS_KEY instead (comma-separated); never as an option.",
    type=click.Path(dir_okay=False, path_type=Path),
)
@_option("--admin-tls-cert", "PEM certificate: serve the admin API over HTTPS.", type=_FILE)
@_option("--admin-tls-key", "PEM private key for --admin-tls-cert.", type=_FILE)
@click.option(
    "--deploy",
    "deploy_dirs",
    multiple=True,
    envvar="EDGEFN_DEPLOY",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Build and deploy this function folder at start; repeatable. "
    "[env: EDGEFN_DEPLOY, folders separated by ':']",
)
def serve(deploy_dirs: tuple[Path, ...], **options: Any) -> None:
    """Run the gateway: public function traffic and the admin API."""
    try:
        options["max_upload"] = parse_size(options["max_upload"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-upload") from None
    # The key only from the environment: an option would show it in `ps`. Empty is
    # unset, as compose and Kubernetes pass a variable the operator left out. Taken
    # out of it: the workers get it with their config, and no process the gateway
    # starts (workers, builds, pip for --deploy) holds it in its environment.
    options["secrets_key"] = os.environ.pop("EDGEFN_SECRETS_KEY", None) or None
    try:
        config = GatewayConfig(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    config.load()  # before any deploy: an unusable token or policy stops here
    if config.admin_exposed_in_clear:
        click.echo(
            f"Warning: the admin API listens on {config.admin_host} without TLS: the token "
            "and deploys cross the network in clear text. Keep --admin-host on 127.0.0.1, "
            "or set --admin-tls-cert and --admin-tls-key.",
            err=True,
        )

    def before_serving(registry: Registry, config: GatewayConfig) -> None:
        if deploy_dirs:
            with config.open_engine() as engine:
                deployer = Deployer(registry, engine, config.data_dir)
                for directory in deploy_dirs:
                    result = build_function(directory, quiet_if_cached=True)
                    version = deploy_directory(deployer, directory, result.path)
                    url = config.public_url() + version.route
                    click.echo(f"Deployed {version.function} version {version.version} at {url}")
        scheme = "https" if config.admin_tls_cert else "http"
        click.echo(
            f"Serving functions on {config.public_url()} with {config.workers} worker(s); "
            f"admin API on {scheme}://{config.admin_host}:{config.admin_port} "
            f"(token in {_token_source(config)}); registry: {registry.location}"
        )
        for directory in deploy_dirs:
            manifest = load_manifest(directory.resolve())
            url = config.public_url() + manifest.route
            if manifest.assets and (directory / manifest.assets / "sample.jpg").is_file():
                click.echo(f"Try: curl -o out.jpg '{url}/sample.jpg?w=400'")
            else:
                click.echo(f"Try: curl {url}/")

    run(config, before_serving=before_serving)


def _token_source(config: GatewayConfig) -> str:
    return "EDGEFN_TOKEN" if config.token else str(config.data_dir / "admin-token")


COMMANDS = [serve]
