"""Which requests of a reusable function run on the caller's thread (`Sandbox.invoke_now`).

Why: in a gateway worker, handing a request to a pool thread and back cost
more than the request. The event loop and the pool thread trade the GIL at
each step (19-28 context switches per request); run on the loop instead, a
`reuse = true` hello cost 537-893 us of CPU per request (median 677, 8 runs)
instead of 1,065-1,419 (median ~1,150, the 6 runs that measured both), and the
worker served 1.4-2x the requests/s (`bench/gateway.py`, 2 workers, wrk -c50).
A hand-off that blocks the loop until the thread answers (up to 2 ms) bought
nothing: the thread's wake-up is paid with the loop idle.

On by default (`$EDGEFN_INLINE_CPU_MS`, 1 ms; 0 turns it off). The loop does
nothing else while a guest runs on it, so everything a guest can do there is
bounded:
- only a request an instance is ready for: reused, instantiated (instantiating
  takes milliseconds), idle, fitting the live limits; and a small body;
- a host call (key-value, outbound HTTP, images, secrets) may wait on I/O or
  work for milliseconds: the first one made on the loop stops the guest before
  the host does anything (`capabilities.host_call`), and the request runs again
  on a thread; so does a wait in WASI once the instance has subscribed to a
  clock, and WASI work of unbounded size (many pollables, many random bytes):
  the epoch deadline does not fire inside WASI, so `_wait_guard.py` puts an
  adapter in front of every component, and one it could not front never runs
  on the loop;
- a guest still running at the second epoch tick (10-20 ms) is stopped, and
  its request runs again on a thread with its whole limits;
- either, or one request holding the loop over `LONG` seconds, sends the
  function's requests to threads for `COOLDOWN` seconds; and only a function
  whose requests took under `cpu` seconds of CPU on average runs on the loop.

A request run again starts over in another instance: nothing the stopped one
did was seen outside its own instance, which is thrown away (no host call got
through; its response and logs are dropped, its fuel not charged).
"""

from __future__ import annotations

import os
import time

from ._errors import SandboxError

__all__ = ["HostCallOnLoop", "InlineGate", "inline_cpu_setting"]

# One request holding the loop longer (wall-clock time: a wait counts) sends
# its function to threads. Not less: at 5 ms, a short request the machine
# preempted under load sent its function to threads in one `bench/gateway.py`
# run of three (874 us of CPU per request against 661 and 692).
LONG = 0.02
# How long a function stays on threads after one of its requests on the loop
# took over `LONG`, met the epoch bound or called the host.
COOLDOWN = 30.0
# The weight of the latest request in the average: a slow one among fast ones
# does not close the gate, a function turning slow does within a few requests.
_WEIGHT = 1 / 8
# Bodies larger than this are copied into the guest on a thread.
MAX_BODY = 64 * 1024
# Epoch ticks a guest may run on the loop: 10-20 ms at 10 ms per tick.
TICKS = 2


class HostCallOnLoop(SandboxError):
    """The guest called the host while on the event loop; never leaves the runtime."""


class InlineGate:
    """One sandbox's record of whether its requests may run on the caller's thread."""

    def __init__(self, cpu: float) -> None:
        self.cpu = cpu  # 0: never
        self.average = 0.0  # CPU seconds per request
        self._closed_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.cpu > 0

    def open(self) -> bool:
        return self.enabled and self.average <= self.cpu and time.monotonic() >= self._closed_until

    def close(self) -> None:
        """Send the function's requests to threads for `COOLDOWN` seconds."""
        self._closed_until = time.monotonic() + COOLDOWN

    def spent(self, cpu: float, held: float | None = None) -> None:
        """Count a request that took `cpu` seconds of CPU to serve, and held the
        loop for `held` seconds if it ran there."""
        self.average += (cpu - self.average) * _WEIGHT
        if held is not None and held > LONG:
            self.close()


# A function whose requests take at most this much CPU on average (1 ms) runs
# them on the loop: a trivial `reuse` request costs 0.2-0.3 ms in the sandbox
# (`bench/gateway.py`), an image pipeline tens of ms.
DEFAULT_CPU = 0.001


def inline_cpu_setting() -> float:
    """`$EDGEFN_INLINE_CPU_MS` in seconds; unset: `DEFAULT_CPU`; 0: never on the loop."""
    configured = os.environ.get("EDGEFN_INLINE_CPU_MS", "").strip()
    if not configured:
        return DEFAULT_CPU
    try:
        value = float(configured)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10:  # the epoch bound stops longer requests anyway
        raise ValueError(
            f"EDGEFN_INLINE_CPU_MS must be a number of ms from 0 to 10, got {configured!r}"
        )
    return value / 1000
