"""Option callbacks for values edgefn parses itself: a bad value is click's usage
error (exit 2) naming its option, as for the values click parses."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import click

from edgefn.signing import parse_key
from edgefn_contract.kv import check_key
from edgefn_contract.secrets import check_name

from .._units import parse_duration

__all__ = ["body", "duration", "kv_key", "secret_name", "signing_key", "url"]


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Seconds, from "600", "90m" or "2s"."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def signing_key(ctx: click.Context, param: click.Parameter, value: str) -> bytes:
    """An HMAC key given as hex (`edgefn.signing.parse_key`); the value is never echoed."""
    try:
        return parse_key(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def body(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes:
    """A request body: the text itself, or @FILE for a file's bytes."""
    if value is None:
        return b""
    if not value.startswith("@"):
        return value.encode()
    try:
        return Path(value[1:]).read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}", ctx, param) from None


def url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A URL or a path that `urllib` can split (an unclosed `[` is not one)."""
    try:
        urlsplit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def kv_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A key-value store key, checked by the rules the host applies: an empty one
    would otherwise make an admin URL that the gateway redirects, not a key's."""
    problem = check_key(value)
    if problem is not None:
        raise click.BadParameter(problem, ctx, param)
    return value


def secret_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A secret's name, checked by the rules the gateway applies (see `kv_key`)."""
    problem = check_name(value)
    if problem is not None:
        raise click.BadParameter(problem, ctx, param)
    return value
