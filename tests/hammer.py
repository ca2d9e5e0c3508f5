"""Load generator for the noisy-neighbour test, run as its own process so that its
threads do not compete for the test process's GIL (which would add tens of
milliseconds to the latencies the test measures).

    python hammer.py BASE_URL SECONDS CLIENTS PATH...

Prints a JSON object of statuses (0 for a transport error) to stdout.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import httpx


def main() -> None:
    base, seconds, clients, paths = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    def hammer(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            i = offset
            while time.monotonic() < deadline:
                try:
                    statuses[client.get(paths[i % len(paths)]).status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                i += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
