"""How many cores this process may really use, container CPU limits included."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores"]


def available_cores(root: Path = Path("/")) -> int:
    """The CPUs this process may run on, lowered to its cgroup's CPU quota.

    In a container the affinity mask shows the node's cores while the CPU limit
    (Docker's `--cpus`, a Kubernetes `limits.cpu`) is a cgroup quota: a 2-CPU
    pod on a 64-core node may run 64 threads but gets 2 cores' worth of time.
    A fractional quota counts as the next whole core. `root` is for tests.
    """
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota(root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup allows per period, or None when unlimited."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy, `cpu.max` = "QUOTA PERIOD"
            found = _read(root / "sys/fs/cgroup", path, ["cpu.max"])
            if found is not None:
                quota, period = found[0].split()
                return None if quota == "max" else int(quota) / int(period)
        elif "cpu" in controllers.split(","):  # cgroup v1: quota -1 when unlimited
            found = _read(
                root / "sys/fs/cgroup" / controllers,
                path,
                ["cpu.cfs_quota_us", "cpu.cfs_period_us"],
            )
            if found is not None and int(found[0]) > 0:
                return int(found[0]) / int(found[1])
    return None


def _read(mount: Path, path: str, names: list[str]) -> list[str] | None:
    """The files `names` in the process's cgroup directory under `mount`, or at
    `mount` itself: inside a container the mount is often the container's own
    cgroup, where the path from /proc/self/cgroup does not exist."""
    for directory in (mount / path.lstrip("/"), mount):
        try:
            return [(directory / name).read_text().strip() for name in names]
        except OSError:
            continue
    return None
