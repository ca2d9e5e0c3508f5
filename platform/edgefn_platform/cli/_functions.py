"""`edgefn new`, `build` and `invoke`: working on a function folder locally."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from edgefn_runtime import Engine, Request, SandboxError
from edgefn_runtime.capabilities import installed

from .._printable import printable
from .._units import format_size
from ..builder import BuildResult, build
from ..gateway.policy import load_policy
from ..manifest import load_manifest
from ..scaffold import TEMPLATES, create_function
from ._params import body

__all__ = ["COMMANDS", "build_function"]


@click.command()
@click.argument("name")
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default="hello",
    show_default=True,
    help="Starter to copy.",
)
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Folder to create the function in.",
)
def new(name: str, template: str, parent: Path) -> None:
    """Create a ready-to-build function folder NAME with a test."""
    target = create_function(name, parent, template)
    click.echo(f"Created {target} from the {template!r} template.")
    click.echo(f"Next: cd {target} && edgefn build && edgefn invoke . /")


@click.command("build")
@click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), default="."
)
@click.option("--force", is_flag=True, help="Rebuild even if no source changed.")
def build_command(directory: Path, force: bool) -> None:
    """Compile the function in DIRECTORY into a WebAssembly component."""
    build_function(directory, force=force)


@click.command("invoke")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("path", default="/")
@click.option("-X", "--request", "method", default="GET", show_default=True, help="HTTP method.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Request header; repeatable.",
)
@click.option(
    "-d",
    "--data",
    callback=body,
    default=None,
    metavar="DATA|@FILE",
    help="Request body; @FILE reads it from a file.",
)
@click.option("-i", "--include-usage", is_flag=True, help="Also print fuel and time used.")
def invoke_command(
    directory: Path,
    path: str,
    method: str,
    headers: tuple[str, ...],
    data: bytes,
    include_usage: bool,
) -> None:
    """Run one request through the function in DIRECTORY, in the real sandbox.

    Builds first if the sources changed. Prints the status line, headers and
    body; the function's log lines go to stderr.
    """
    result = build_function(directory, quiet_if_cached=True)
    manifest = result.manifest
    request = Request(
        method.upper(), *_split_query(path), headers=_parse_headers(headers), body=data
    )
    assets = directory / manifest.assets if manifest.assets else None
    # The operator's outbound policy from EDGEFN_OUTBOUND_* (e.g. a local origin
    # needs EDGEFN_OUTBOUND_ALLOWED_NETWORKS=127.0.0.1/32), as `serve` reads it.
    outbound = load_policy(None).outbound
    # One request, on this thread: nothing made ahead, no event loop to run on.
    with Engine(capabilities=installed(outbound=outbound), ahead=0, inline_cpu=0) as engine:
        started = time.perf_counter()
        sandbox = engine.load(
            result.path, env=manifest.env, assets=assets, grants=manifest.grants()
        )
        loaded = time.perf_counter() - started
        try:
            outcome = sandbox.invoke(request, manifest.resolve_limits())
        except SandboxError as exc:
            _echo_logs(exc.logs)  # what it printed before it failed; the error is shown by main
            raise
    _echo_logs(outcome.logs)
    response = outcome.response
    click.echo(f"HTTP {response.status}")
    for name, value in response.headers:
        click.echo(f"{printable(name)}: {printable(value)}")
    click.echo()
    sys.stdout.flush()
    sys.stdout.buffer.write(response.body)
    if response.body and not response.body.endswith(b"\n"):
        click.echo()
    if include_usage:
        usage = outcome.usage
        click.echo(
            f"usage: fuel {usage.fuel:,}, instantiate {usage.instantiate_seconds * 1000:.2f} ms, "
            f"execute {usage.execute_seconds * 1000:.2f} ms, load {loaded * 1000:.0f} ms",
            err=True,
        )


def build_function(
    directory: Path, *, force: bool = False, quiet_if_cached: bool = False
) -> BuildResult:
    name = load_manifest(directory.resolve()).name
    if not quiet_if_cached:
        click.echo(f"Building {name} from {directory} ...", err=True)
    result = build(directory, force=force, progress=lambda step: click.echo(f"  {step}", err=True))
    if result.cached:
        if not quiet_if_cached:
            click.echo(f"Up to date: {result.path}", err=True)
    else:
        click.echo(
            f"Built {result.path} in {result.seconds:.1f} s "
            f"({format_size(result.size)}, sha256 {result.sha256[:12]})",
            err=True,
        )
    return result


def _split_query(path: str) -> tuple[str, str]:
    path, _, query = path.partition("?")
    return (path if path.startswith("/") else f"/{path}"), query


def _parse_headers(headers: tuple[str, ...]) -> list[tuple[str, str]]:
    parsed = []
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'NAME: VALUE', got {header!r}", param_hint="-H")
        parsed.append((name.strip(), value.strip()))
    return parsed


def _echo_logs(lines: list[str]) -> None:
    # The function's own text: escaped, so it cannot drive the terminal.
    for line in lines:
        click.secho(f"log | {printable(line)}", err=True, dim=True)


COMMANDS = [new, build_command, invoke_command]
