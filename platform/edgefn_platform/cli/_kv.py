"""`edgefn kv get|set|rm|ls NAME STORE [KEY]`: a function's key-value stores,
through the admin API, for operators and debugging."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from .._printable import printable
from ._admin import _with_client
from ._params import kv_key

if TYPE_CHECKING:  # made by _admin._with_client, which imports httpx when it runs
    from ..client import AdminClient

__all__ = ["COMMANDS"]


@click.group("kv")
def kv() -> None:
    """Read and change a function's key-value stores (those its manifest declares
    in key_value_stores). Changes apply to its next request, on every gateway
    sharing the registry."""


@kv.command("get")
@click.argument("name")
@click.argument("store")
@click.argument("key", callback=kv_key)
@_with_client
def get(name: str, store: str, key: str, client: AdminClient) -> None:
    """Write KEY's value to stdout, as stored (bytes, no newline added).

    Exits 1 with a message on stderr if the key is absent or expired."""
    value = client.kv_get(name, store, key)
    sys.stdout.flush()  # anything echoed before goes first
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()


@kv.command("set")
@click.argument("name")
@click.argument("store")
@click.argument("key", callback=kv_key)
@click.argument("value", required=False)
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Remove it after this many seconds. [default: kept until removed]",
)
@_with_client
def set_(
    name: str, store: str, key: str, value: str | None, ttl: float | None, client: AdminClient
) -> None:
    """Set KEY to VALUE (UTF-8), or to stdin's bytes when VALUE is - or missing:

    edgefn kv set shop default greeting hello

    edgefn kv set shop default logo.png - < logo.png
    """
    data = sys.stdin.buffer.read() if value in (None, "-") else str(value).encode()
    client.kv_set(name, store, key, data, ttl)
    expiry = "" if ttl is None else f", expiring in {ttl:g} s"
    click.echo(printable(f"Set {key!r} in {name}'s store {store} ({len(data):,} bytes{expiry})"))


@kv.command("rm")
@click.argument("name")
@click.argument("store")
@click.argument("key", callback=kv_key)
@_with_client
def remove(name: str, store: str, key: str, client: AdminClient) -> None:
    """Remove KEY (nothing to do if it is absent)."""
    client.kv_delete(name, store, key)
    click.echo(printable(f"Removed {key!r} from {name}'s store {store}"))


@kv.command("ls")
@click.argument("name")
@click.argument("store")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--limit", type=click.IntRange(1, 1000), default=1000, help="At most this many keys.")
@_with_client
def list_keys(name: str, store: str, prefix: str, limit: int, client: AdminClient) -> None:
    """List the store's keys, one per line, in byte order."""
    for key in client.kv_keys(name, store, prefix, limit):
        click.echo(printable(key))  # written by function code: see _printable


COMMANDS = [kv]
