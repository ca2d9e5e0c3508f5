"""`edgefn deploy`, `ls`, `info`, `versions`, `rollback`, `rm`, `logs`, `purge`: the admin API."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._printable import printable
from .._units import format_size
from ..gateway import pack_assets
from ..gateway.policy import describe
from ..manifest import MANIFEST_FILE, load_manifest
from ..registry._model import LOG_LINES_KEPT
from ._functions import build_function

if TYPE_CHECKING:  # httpx, ~0.25 s to import, only for the commands that call it
    from ..client import AdminClient

__all__ = ["COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])


def _with_client(command: F) -> F:
    """Add --gateway/--token and pass an `AdminClient` as `client`."""

    @click.option(
        "--gateway",
        default="http://127.0.0.1:8081",
        envvar="EDGEFN_GATEWAY",
        help="Admin API URL. [env: EDGEFN_GATEWAY]",
    )
    @click.option(
        "--token",
        envvar="EDGEFN_TOKEN",
        default=None,
        show_default=False,
        help="Admin token; else read from $EDGEFN_DATA_DIR/admin-token or "
        "./.edgefn-data/admin-token. [env: EDGEFN_TOKEN]",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, gateway: str, token: str | None, **kwargs: Any) -> Any:
        from ..client import AdminClient

        client = AdminClient(gateway, token or _local_token())
        try:
            return command(*args, client=client, **kwargs)
        finally:
            client.close()

    return wrapper  # type: ignore[return-value]


def _local_token() -> str | None:
    # A gateway started here keeps its token in its data directory: the one
    # `edgefn serve` would use in this shell (EDGEFN_DATA_DIR, else ./.edgefn-data).
    data_dir = Path(os.environ.get("EDGEFN_DATA_DIR") or ".edgefn-data")
    try:
        return (data_dir / "admin-token").read_text().strip()
    except OSError:
        return None


@click.command()
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@_with_client
def deploy(directory: Path, client: AdminClient) -> None:
    """Build the function in DIRECTORY if it changed, upload it and make it active.

    Returns once every worker of the gateway serves it: the URL answers at once."""
    started = time.perf_counter()
    result = build_function(directory)
    manifest = load_manifest(directory.resolve())
    with tempfile.TemporaryDirectory() as temp:
        assets = None
        if manifest.assets:
            assets = Path(temp) / "assets.tar.gz"
            pack_assets(directory / manifest.assets, assets)
        size = result.size + (assets.stat().st_size if assets else 0)
        with click.progressbar(
            length=size,
            label=f"Uploading {format_size(size)}",
            file=sys.stderr,
        ) as bar:
            deployed = client.deploy(
                (directory / MANIFEST_FILE).read_text(encoding="utf-8"),
                result.path,
                assets,
                progress=lambda n: bar.update(n),
            )
    seconds = time.perf_counter() - started
    for warning in deployed.get("warnings", []):
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    click.echo(
        f"Deployed {deployed['name']} version {deployed['version']} in {seconds:.1f} s, "
        f"{_live(deployed)}: {deployed['url']}"
    )


@click.command("ls")
@_with_client
def list_functions(client: AdminClient) -> None:
    """List deployed functions."""
    rows = [
        (f["name"], f["route"], str(f["active"]["version"]), _when(f["updated_at"]))
        for f in client.functions()
    ]
    _table(["NAME", "ROUTE", "VERSION", "UPDATED"], rows)


@click.command()
@click.argument("name")
@_with_client
def info(name: str, client: AdminClient) -> None:
    """Show a function: route, active version, size, when it was deployed, the
    key-value stores and secrets it declares (whether each secret is set, never its
    value), and the limits it runs with (as `edgefn limits` shows them) and where
    each comes from."""
    function = client.function(name)
    effective = client.limits(name)
    active = function["active"]
    click.echo(f"name:        {function['name']}")
    click.echo(f"url:         {function['url']}")
    click.echo(f"version:     {active['version']} of {function['versions']}")
    click.echo(f"deployed:    {_when(active['created_at'])}")
    click.echo(f"size:        {format_size(active['size'])}  sha256 {active['sha256'][:16]}")
    click.echo(f"env:         {', '.join(active['env']) or '-'}")
    # .get: a gateway older than 0.6.0 does not say.
    click.echo(printable(f"kv stores:   {', '.join(active.get('key_value_stores', [])) or '-'}"))
    click.echo(printable(f"secrets:     {_secrets_line(name, active.get('secrets', []), client)}"))
    for key, entry in effective["limits"].items():
        source = f"  ({entry['source']})" if entry.get("source") else ""
        click.echo(f"limit {key + ':':17} {describe(key, entry['value'])}{source}")
    for warning in effective.get("warnings", []):
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _secrets_line(name: str, declared: list[str], client: AdminClient) -> str:
    """The declared secrets, each with whether the operator has set it (never a value)."""
    if not declared:
        return "-"
    set_at = {entry["name"]: entry["set_at"] for entry in client.secrets(name)}
    return ", ".join(
        f"{key} (set {_when(set_at[key])})"
        if set_at.get(key) is not None
        else f"{key} (not set: edgefn secrets set {name} {key})"
        for key in declared
    )


@click.command()
@click.argument("name")
@_with_client
def versions(name: str, client: AdminClient) -> None:
    """List every version of a function; the active one is starred."""
    active = client.function(name)["active"]["version"]
    rows = [
        (
            "*" if v["version"] == active else "",
            str(v["version"]),
            v["route"],
            format_size(v["size"]),
            v["sha256"][:12],
            _when(v["created_at"]),
        )
        for v in client.versions(name)
    ]
    _table(["", "VERSION", "ROUTE", "SIZE", "SHA256", "DEPLOYED"], rows)


@click.command()
@click.argument("name")
@click.option(
    "--to",
    "version",
    type=int,
    default=None,
    show_default=False,
    help="Version to activate (default: the one before the active one).",
)
@_with_client
def rollback(name: str, version: int | None, client: AdminClient) -> None:
    """Activate an earlier version of NAME at once (no rebuild, no recompile)."""
    if version is None:
        active = client.function(name)["active"]["version"]
        earlier = [v["version"] for v in client.versions(name) if v["version"] < active]
        if not earlier:
            raise click.ClickException(f"{name} has no version before {active}")
        version = max(earlier)
    function = client.activate(name, version)
    click.echo(
        f"{name} now serves version {function['active']['version']}, {_live(function)}: "
        f"{function['url']}"
    )


_LIMIT_OPTIONS = [
    ("memory", "Linear memory, e.g. 128MiB."),
    ("fuel", "Fuel units, e.g. 5e9."),
    ("timeout", "Wall clock, e.g. 3s."),
    ("concurrency", "Requests in flight per worker."),
    ("max-body", "Request body, e.g. 10MiB."),
    ("max-response", "Response body, e.g. 10MiB."),
    ("max-log", "Log bytes per request, e.g. 64KiB."),
    ("max-image-pixels", "Largest image decoded, e.g. 40e6."),
    ("max-kv-value", "One key-value store value, e.g. 1MiB."),
    ("max-kv-store", "Bytes one store keeps (keys and values), e.g. 100MiB."),
    ("max-kv-keys", "Keys one store keeps, e.g. 100000."),
    ("max-kv-ops", "Key-value operations per request, e.g. 1000."),
]


def _limit_options(command: F) -> F:
    for name, text in reversed(_LIMIT_OPTIONS):
        command = click.option(f"--{name}", default=None, show_default=False, help=text)(command)
    return command


@click.command()
@click.argument("name")
@_limit_options
@click.option("--reset", is_flag=True, help="Drop every override: back to the manifest.")
@_with_client
def limits(name: str, reset: bool, client: AdminClient, **values: str | None) -> None:
    """Show NAME's effective limits and where each comes from; change them live.

    Without options, shows them. With options (edgefn limits resize --memory 128MiB
    --timeout 3s), overrides them at once on every worker, no redeploy.
    """
    changes = {key: value for key, value in values.items() if value is not None}
    if reset:
        result = client.reset_limits(name)
    elif changes:
        result = client.set_limits(name, changes)
    else:
        result = client.limits(name)
    rows = [
        (key, describe(key, entry["value"]), entry["source"])
        for key, entry in result["limits"].items()
    ]
    _table(["LIMIT", "VALUE", "FROM"], rows)
    for warning in result["warnings"]:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if reset or changes:
        click.echo(f"Applied, {_live(result)}.")


@click.command("rm")
@click.argument("name")
@_with_client
def remove(name: str, client: AdminClient) -> None:
    """Delete a function: its route stops answering at once."""
    client.delete(name)
    click.echo(f"Deleted {name}; no worker of the gateway serves it any more")


@click.command()
@click.argument("name")
@click.option(
    "--prefix",
    default="/",
    metavar="PATH",
    help="Only the responses for paths under PATH (relative to the function's route, "
    "e.g. /img/ for /NAME/img/...; the query does not count).",
)
@_with_client
def purge(name: str, prefix: str, client: AdminClient) -> None:
    """Drop NAME's cached responses: the next request for each runs the function.

    Applied by every worker of the gateway when it returns, and by the other
    gateways sharing its PostgreSQL within a second."""
    result = client.purge(name, prefix)
    what = "every cached response" if prefix == "/" else f"the cached responses under {prefix}"
    click.echo(printable(f"Purged {what} of {result['function']}, {_live(result)}"))


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they arrive.")
@click.option(
    "--request-id",
    default=None,
    show_default=False,
    help="Only the lines of this request (the X-Request-Id its client got).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line (id, time, request_id, kind, line), values as stored.",
)
@_with_client
def logs(
    name: str, follow: bool, request_id: str | None, as_json: bool, client: AdminClient
) -> None:
    """Print NAME's recent log lines and access lines.

    Request ids are printed whole, so the X-Request-Id a client got can be
    searched for. Control characters that guests or clients put in log lines,
    paths or ids are shown escaped (\\x1b, \\r, \\n); --json gives the raw values.
    """

    def show(records: list[dict[str, Any]], cursor: int) -> int:
        """Print `records`; the id of the last line shown (`cursor` if none)."""
        for record in records:
            click.echo(json.dumps(record) if as_json else _log_line(record))
        return int(records[-1]["id"]) if records else cursor

    after = show(client.log_page(name, 0, request_id, oldest=False).lines, 0)
    while follow:
        # From the last line shown on, oldest first: every line still kept is
        # printed, however many arrived since; at once again while more wait.
        page = client.log_page(name, after, request_id, oldest=True, limit=_FOLLOW_PAGE)
        if page.skipped:
            click.secho(
                f"edgefn: lines were dropped before they could be shown (the gateway keeps "
                f"the newest {LOG_LINES_KEPT:,} per function)",
                fg="yellow",
                err=True,
            )
        after = show(page.lines, after)
        if not page.more:
            time.sleep(_FOLLOW_INTERVAL)


# How often `logs --follow` asks for new lines while it has shown all of them, and
# how many it asks for at once (the gateway keeps LOG_LINES_KEPT per function).
_FOLLOW_INTERVAL = 0.5
_FOLLOW_PAGE = 500


def _log_line(record: dict[str, Any]) -> str:
    """One record as a line for a terminal: every value from the guest or the client
    escaped (`printable`), so none can move the cursor or forge a line."""
    stamp = datetime.fromtimestamp(record["time"]).strftime("%H:%M:%S.%f")[:-3]
    line = record["line"]
    if record["kind"] == "access":
        entry = json.loads(line)
        line = (
            f"{entry['method']} {entry['path']} -> {entry['status']} "
            f"{entry['outcome']} {entry['total_ms']} ms fuel {entry['fuel']:,}"
        )
    return printable(f"{stamp} {record['request_id']} {record['kind']:6} {line}")


def _live(answer: dict[str, Any]) -> str:
    """ "live on N worker(s)": the admin API answers a change once every worker of
    the gateway that took it serves it."""
    count = len(answer.get("workers", []))
    return f"live on {count} worker{'s' if count != 1 else ''}"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: list[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    for row in [tuple(headers), *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())


COMMANDS = [deploy, list_functions, info, versions, rollback, limits, remove, logs, purge]
