"""The `edgefn` command line: a thin click layer over the builder, runtime and admin API.

Errors are shown here and nowhere else, as click shows its own: an `EdgefnError`
as one `Error: ...` line on stderr, exiting with the error's `exit_code`
(README, "CLI exit codes"); anything else is a bug in edgefn, shown as one line
naming it, its traceback only with `EDGEFN_DEBUG=1`. (`edgefn dev` alone prints a
failed rebuild itself, escaped the same way, and keeps watching.)
"""

from __future__ import annotations

import errno
import os
from typing import Any

import click

from edgefn_runtime import EdgefnError, SandboxError

from .._printable import printable, printable_lines
from . import _admin, _dev, _functions, _gateway, _kv, _secrets, _sign

__all__ = ["main"]

_REPORT = "a bug in edgefn: please report it, with the traceback EDGEFN_DEBUG=1 prints"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefnError as exc:
            # Shown as click shows a ClickException, with the error's own exit code.
            click.echo(f"Error: {_message(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: it shows them and picks their exit codes
        except Exception as exc:
            broken_pipe = isinstance(exc, OSError) and exc.errno == errno.EPIPE
            if broken_pipe or os.environ.get("EDGEFN_DEBUG") == "1":
                raise  # `edgefn ls | head`: click exits quietly; or a traceback asked for
            raise click.ClickException(
                printable(f"unexpected {type(exc).__name__}: {exc}; {_REPORT}")
            ) from None


def _message(exc: EdgefnError) -> str:
    # Messages may quote a build tool, a manifest or a server: escaped, their
    # line breaks kept. A function's failure also names the code the gateway
    # would answer with (`timeout`, `function_error`, ...).
    return printable_lines(f"{exc.code}: {exc}" if isinstance(exc, SandboxError) else str(exc))


@click.group(cls=_Group, context_settings={"show_default": True})
@click.version_option(package_name="edgefn")
def main() -> None:
    """Build, run and deploy Python edge functions as WebAssembly components."""


for module in (_functions, _dev, _gateway, _admin, _kv, _secrets, _sign):
    for command in module.COMMANDS:
        main.add_command(command)
