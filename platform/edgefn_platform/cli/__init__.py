"""The `edgefn` command line: a thin click layer over the builder, runtime and admin API."""

from __future__ import annotations

from typing import Any

import click

from edgefn_runtime import InvalidComponent

from .._printable import printable_lines
from ..builder import BuildError
from ..client import AdminError
from ..manifest import ManifestError
from ..scaffold import ScaffoldError
from . import _admin, _functions, _gateway, _sign

__all__ = ["main"]

# Errors a user can act on: shown as one line, exit code 1, never a traceback.
_USER_ERRORS = (AdminError, BuildError, ManifestError, ScaffoldError, InvalidComponent)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            # Messages may quote a build tool, a manifest or a server: escaped,
            # their line breaks kept.
            raise click.ClickException(printable_lines(str(exc))) from None


@click.group(cls=_Group, context_settings={"show_default": True})
@click.version_option(package_name="edgefn")
def main() -> None:
    """Build, run and deploy Python edge functions as WebAssembly components."""


for module in (_functions, _gateway, _admin, _sign):
    for command in module.COMMANDS:
        main.add_command(command)
