"""A worker's lifeline to its supervisor: the kernel ends the worker when the
supervisor dies, however it dies.

A supervisor that is stopped with SIGINT/SIGTERM drains its workers itself. One
killed with SIGKILL (or crashing, or taken by the OOM killer) cannot: before
this, its workers kept serving on the shared ports indefinitely, and a new
`edgefn serve` on the same ports then shared them (SO_REUSEPORT) with the stale
workers.
"""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["die_with"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this process when `supervisor`, its parent, dies.

    SIGKILL rather than SIGTERM: the supervisor's own stop already drains workers
    gracefully, so this fires only when something went badly wrong, and a worker
    whose event loop is stuck would never act on a SIGTERM. The kernel sends the
    signal when the *thread* that forked this process exits, so the supervisor
    must start workers from a thread that lives as long as it does (its main
    thread). The signal is armed first and the parent checked after, so a
    supervisor that died between our fork and the `prctl` is noticed too (we
    have then been reparented, to init or a subreaper).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != supervisor:
        os._exit(1)
