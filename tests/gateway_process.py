"""A real `edgefn serve` in a subprocess on loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from edgefn_platform.cli import main

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    data_dir: Path
    workers: int = 1
    token: str = "test-token"
    extra_env: dict[str, str] = field(default_factory=dict)
    # A PostgreSQL URL: the registry this gateway shares with others.
    database_url: str | None = None
    # A command the gateway runs under, e.g. setpriv dropping a capability.
    wrapper: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    # For an admin listener with TLS: "https" and an SSL context that trusts its CA.
    admin_scheme: str = "http"
    verify: ssl.SSLContext | bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.admin_scheme}://127.0.0.1:{self.admin_port}"

    def start(self, wait_for: str = "/readyz") -> GatewayProcess:
        env = {
            **os.environ,
            "EDGEFN_TOKEN": self.token,
            "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn"),
            **self.extra_env,
        }
        command = [
            *self.wrapper,
            sys.executable,
            "-m",
            "edgefn_platform",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            *(["--database-url", self.database_url] if self.database_url else []),
        ]
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            self.wait_ready(wait_for)
        except BaseException:
            self.kill()  # a gateway that never got ready must not outlive the test
            raise
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = 60) -> None:
        """Until the admin listener answers 200 on `path` ten times in a row, on new
        connections, so that every worker (SO_REUSEPORT) is likely to have answered."""
        deadline, streak = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "gateway exited"
            try:
                ok = httpx.get(self.admin_url + path, verify=self.verify).status_code == 200
                streak = streak + 1 if ok else 0
                if streak >= 10:
                    return
                if ok:
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the gateway did not start")

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.request(
            method, self.admin_url + path, headers=headers, timeout=120, verify=self.verify,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.public_url + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the gateway and its workers."""
        assert self.process is not None
        for pid in children(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited meanwhile
        self.process.kill()
        self.process.wait()


@contextmanager
def serving(
    gateway: GatewayProcess, *functions: Path, limits: dict[str, tuple[str, ...]] | None = None
) -> Iterator[GatewayProcess]:
    """`gateway` started with `functions` deployed and `limits` (CLI options per
    function) set; stopped on the way out, whatever happens inside."""
    gateway.start()
    try:
        for directory in functions:
            result = cli(gateway, "deploy", str(directory))
            assert result.exit_code == 0, result.output
        for name, options in (limits or {}).items():
            result = cli(gateway, "limits", name, *options)
            assert result.exit_code == 0, result.output
        yield gateway
    finally:
        gateway.stop()


def start_dev(directory: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`edgefn dev directory` on `port`, its output appended to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "edgefn_platform", "dev", str(directory), "--port", str(port)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn")},
    )


def cli(gateway: GatewayProcess, *args: str) -> Result:
    """`edgefn <args>` against `gateway`'s admin API, in this process."""
    return CliRunner().invoke(
        main, [*args, "--gateway", gateway.admin_url, "--token", gateway.token]
    )


def worker_pids(gateway: GatewayProcess) -> list[int]:
    """The worker processes of a multi-worker gateway (not multiprocessing's helper)."""
    assert gateway.process is not None
    return [
        pid for pid in children(gateway.process.pid) if b"resource_tracker" not in _cmdline(pid)
    ]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def worker_rss(gateway: GatewayProcess) -> list[int]:
    """Resident memory of each worker process, in bytes."""
    return [rss(pid) for pid in worker_pids(gateway)]


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of process `pid` in bytes; `VmHWM` for its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"process {pid} reports no {field}")


def reset_peak_rss(pid: int) -> int:
    """Start `pid`'s peak (VmHWM) afresh from its resident memory now, and return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return rss(pid)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
