"""A throwaway PostgreSQL cluster on a loopback port, for the test session.

`initdb` and `pg_ctl` from Debian's `postgresql` package (`make test` installs
it when missing) run into a temporary directory; as root, they run as the
unprivileged user `nobody`, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

_UNPRIVILEGED = "nobody"
_ATTEMPTS = 5


def _unused_port() -> int:
    """A loopback port nothing listens on right now. PostgreSQL cannot be told to
    take any free port and say which, so another process may take this one before
    it binds: the first `Cluster.start()` then retries on another."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed: `make test` installs it with "
            "`apt-get install postgresql`; run that (as root) or put its bin/ on PATH"
        )
    return found


@dataclass
class Cluster:
    """One PostgreSQL server: `start()`, `stop()` (and start again), `database()`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgefn-pg-")))
    port: int = field(default_factory=_unused_port)
    _started: bool = field(default=False, init=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://edgefn@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", _UNPRIVILEGED, "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, cwd="/")

    def init(self) -> Cluster:
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, _UNPRIVILEGED)
        self._run(
            _binary("initdb"), "-D", str(self.data), "-U", "edgefn",
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        return self

    def start(self) -> None:
        """Start the server; the first time, on another port if its port was taken
        (a restart keeps the port: URLs handed out must stay valid)."""
        for attempt in range(1, _ATTEMPTS + 1):
            log = self.root / "log"
            logged = log.stat().st_size if log.exists() else 0
            try:
                self._start()
            except subprocess.CalledProcessError:
                text = log.read_bytes()[logged:] if log.exists() else b""
                if self._started or attempt == _ATTEMPTS or b"could not bind" not in text:
                    raise
                self.port = _unused_port()
            else:
                self._started = True
                return

    def _start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
