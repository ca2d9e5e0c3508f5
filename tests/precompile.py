"""Compile the functions the tests deploy into the AOT cache, beside the suite.

`make test` runs this at the lowest priority (`nice -n 19`) while pytest runs.
A component's first deploy in a session otherwise compiles it on the test's path:
about 8 s of both cores for each. This compiles them on what
the suite leaves idle instead (about 40 % of the machine over a run); one the
cache holds already is only loaded. A component a test compiles at the same time is
only compiled twice (the cache keeps the first artifact written). The functions
must be built: `make test` builds them first.
"""

from __future__ import annotations

import ctypes
import signal
from pathlib import Path

from edgefn_runtime import Engine

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def main() -> None:
    # Ends with the recipe's shell, however that ends: a started process ignores
    # SIGINT there, so Ctrl-C would not reach it, nor would the recipe's `kill` run.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The gateways' cache (tests/gateway_process.py), with their engine settings.
    with Engine(cache_dir=ROOT / ".cache" / "edgefn") as engine:
        # What `make test` builds (functions/*/ and tests/functions/*/), in its order.
        for pattern in ("functions/*/.edgefn/*.wasm", "tests/functions/*/.edgefn/*.wasm"):
            for wasm in sorted(ROOT.glob(pattern)):
                engine.load(wasm)  # a hit when compiled already: ~50 ms


if __name__ == "__main__":
    main()
