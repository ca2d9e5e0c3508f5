"""Run natively, in a child process, by `edgefn build` before componentize-py.

Usage: python -I -S _entry_check.py FUNCTION_DIR MODULE:ATTRIBUTE PATH...

Prints one human-readable problem and exits 1, or exits 0 when the sources
compile and the entry names an `edgefn.App`. Runs in a child so the function's
import-time code cannot touch the builder's process.
"""

import ctypes
import os
import signal
import sys
import traceback
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main() -> int:
    # Killed with what asked for the check (a build, `edgefn dev`), however that ends:
    # the function's module-level code must not outlive it.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    directory, entry, search_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    for path in sorted(directory.rglob("*.py")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") or part in {"tests", "__pycache__"} for part in relative.parts):
            continue
        try:
            compile(path.read_bytes(), str(relative), "exec")
        except SyntaxError as exc:
            print(f"{relative}:{exc.lineno}:{exc.offset or 0}: {type(exc).__name__}: {exc.msg}")
            return 1
    sys.path[:0] = [str(directory), *search_path]
    os.chdir(directory)
    module_name, _, attribute = entry.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
    except Exception as exc:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if f.filename.startswith(str(directory))
        ]
        where = ""
        if frames:
            where = f"{Path(frames[-1].filename).relative_to(directory)}:{frames[-1].lineno}: "
        print(f"{where}importing entry module {module_name!r} failed: {type(exc).__name__}: {exc}")
        return 1
    if not hasattr(module, attribute):
        print(
            f"entry {entry!r}: module {module_name!r} has no attribute {attribute!r}; "
            f"set `entry` in edgefn.toml or define `{attribute} = App()`"
        )
        return 1
    from edgefn import App

    app = getattr(module, attribute)
    if not isinstance(app, App):
        print(f"entry {entry!r} is a {type(app).__name__}, not an edgefn.App")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
