"""`edgefn secrets set|ls|rm|rotate|keygen`: the operator's secrets, through the
admin API. Values are read from stdin or a hidden prompt, never from an argument
(which would land in the shell's history and in `ps`), and never printed."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from .._printable import printable
from ..secrets import generate_key
from ._admin import _with_client
from ._params import secret_name

if TYPE_CHECKING:  # made by _admin._with_client, which imports httpx when it runs
    from ..client import AdminClient

__all__ = ["COMMANDS"]


@click.group("secrets")
def secrets() -> None:
    """Set and remove the secrets functions read with `edgefn.secrets.get` (the names
    their manifest declares in `secrets`). A change applies to the next request on
    every worker and gateway, without a redeploy."""


@secrets.command("set")
@click.argument("name")
@click.argument("key", callback=secret_name)
@_with_client
def set_(name: str, key: str, client: AdminClient) -> None:
    """Set the secret KEY of function NAME: its value from stdin when piped, else
    from a hidden prompt.

    printf %s "$TOKEN" | edgefn secrets set shop ORIGIN_TOKEN
    """
    if sys.stdin.isatty():
        value = click.prompt(f"Value of {key}", hide_input=True, confirmation_prompt=True)
    else:
        # As piped, but without the one line break `echo` adds.
        value = sys.stdin.read().removesuffix("\n")
    if not value:
        raise click.UsageError("the value is empty; `edgefn secrets rm` removes a secret")
    result = client.set_secret(name, key, value)
    note = "" if result.get("declared") else f" (the active version of {name} does not declare it)"
    click.echo(printable(f"Set the secret {key} of {name}{note}"))


@secrets.command("ls")
@click.argument("name")
@_with_client
def list_secrets(name: str, client: AdminClient) -> None:
    """List NAME's secrets: names, when set, whether declared (never values)."""
    for entry in client.secrets(name):
        at = entry["set_at"]
        when = "not set" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
        declared = "declared" if entry["declared"] else "not declared"
        # Tab-separated columns: names are checked on set (letters, digits, '_').
        click.echo("\t".join((printable(str(entry["name"])), when, declared)))


@secrets.command("rm")
@click.argument("name")
@click.argument("key", callback=secret_name)
@_with_client
def remove(name: str, key: str, client: AdminClient) -> None:
    """Remove the secret KEY of NAME: the function reads None from its next request."""
    client.delete_secret(name, key)
    click.echo(printable(f"Removed the secret {key} of {name}"))


@secrets.command("rotate")
@_with_client
def rotate(client: AdminClient) -> None:
    """Encrypt every stored secret again with the gateway's first key (after adding a
    new key first in the key file), so that the older keys can then be removed."""
    count = client.rotate_secrets()
    click.echo(f"Encrypted {count} secret(s) with the first key")


@secrets.command("keygen")
def keygen() -> None:
    """Print a new secrets key (for --secrets-key-file or EDGEFN_SECRETS_KEY)."""
    click.echo(generate_key())


COMMANDS = [secrets]
