"""The dev runner's handler (`edgefn dev`): the function is imported from `/src`
when an instance first handles a request, instead of being snapshotted into the
component at build time, so an edit is live at the next instance without a
build (componentize-py and Cranelift took 17-19 s for hello; an import, ~10 ms).

Imported only inside the dev runner: `wit_world.imports.dev` exists only in its
world, which no gateway links, so a dev runner cannot be deployed.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from wit_world.exports import IncomingHandler
from wit_world.imports import dev as host_dev
from wit_world.imports.types import RequestHead, ResponseBody_Written, ResponseHead

from ._guest import _handle, _write_body
from ._preload import importing_from, preload
from ._routing import App

__all__ = ["SOURCE_DIR", "handler"]

SOURCE_DIR = "/src"

# The function's App, or the error page its import gave: one import per instance
# (a fresh instance per request imports again; a reused one, once).
_loaded: App | str | None = None


def handler(built: frozenset[str]) -> type[IncomingHandler]:
    """The runner's handler class, at build time. `built`: the modules a built
    function's entry has loaded before it imports the function; every other one is
    preloaded, for the function's import alone (see _preload.py)."""
    preload(built)
    return _Handler


class _Handler(IncomingHandler):
    def handle(self, request: RequestHead) -> ResponseHead:
        global _loaded
        if _loaded is None:
            _loaded = _import(host_dev.entry())
        if isinstance(_loaded, str):
            page = _loaded.encode()
            headers = "content-type: text/plain; charset=utf-8\n"
            return ResponseHead(500, headers, ResponseBody_Written(_write_body(page)))
        return _handle(_loaded, request)


def _import(entry: str) -> App | str:
    """The App `entry` names, or the page that says why it could not be had:
    written to the log stream (the `edgefn dev` terminal) and answered as a 500."""
    module_name, _, attribute = entry.partition(":")
    sys.dont_write_bytecode = True  # /src is read-only
    try:
        with importing_from(SOURCE_DIR):
            app = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(app, App):
            raise TypeError(f"entry {entry!r} is a {type(app).__name__}, not an edgefn.App")
        return app
    except BaseException as exc:  # noqa: BLE001 - shown to the developer, not trapped
        page = _page(exc)
        print(page, file=sys.stderr)
        return page


def _page(exc: BaseException) -> str:
    """What went wrong, where in the function's source: "app.py, line 7:
    NameError: ...", then the traceback of its frames alone (not the runner's)."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(SOURCE_DIR)
    ]
    message = str(exc)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where, message = f"{exc.filename}, line {exc.lineno}: ", exc.msg
    elif frames:
        where = f"{frames[-1].filename}, line {frames[-1].lineno}: "
    lines = [f"edgefn dev: {where}{type(exc).__name__}: {message}\n\n"]
    if frames:
        lines += ["Traceback (most recent call last):\n", *traceback.format_list(frames)]
    lines += traceback.format_exception_only(exc)
    return "".join(lines).replace(SOURCE_DIR + "/", "")
