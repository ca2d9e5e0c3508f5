"""`edgefn sign`: a signed URL for a function that checks signatures (edgefn.signing)."""

from __future__ import annotations

import math
import time

import click

from edgefn.signing import sign_url

from ._params import duration, signing_key
from ._params import url as url_param

__all__ = ["COMMANDS"]


@click.command("sign")
@click.argument("url", callback=url_param)
@click.option("-X", "--method", default="GET", help="The HTTP method the URL is for.")
@click.option(
    "--expires-in",
    callback=duration,
    default=None,
    show_default=False,
    help='Lifetime, e.g. "600" or "90m", signed into the URL as exp=; default: none.',
)
@click.option(
    "--key",
    envvar="EDGEFN_SIGNING_KEY",
    callback=signing_key,
    required=True,
    help="The function's SIGNING_KEY (hex). Give it in the environment, so it stays "
    "out of `ps` and shell history. [env: EDGEFN_SIGNING_KEY]",
)
def sign(url: str, method: str, expires_in: float | None, key: bytes) -> None:
    """Print URL (a path or a full URL, route included) signed for METHOD."""
    expires = None if expires_in is None else math.ceil(time.time() + expires_in)
    click.echo(sign_url(key, method, url, expires=expires))


COMMANDS = [sign]
