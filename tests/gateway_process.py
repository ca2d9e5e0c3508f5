"""A real `edgefn serve` in a subprocess on loopback ports, for end-to-end tests.

The gateway binds ports the kernel picks (`--port 0 --admin-port 0`) and prints
them; `start()` reads them back, so no port is probed, released and raced for.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from edgefn_platform.cli import main
from waiting import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parent.parent
# What `edgefn serve` and `edgefn dev` print on stderr for each listener.
_LISTENING = re.compile(rb"^edgefn: (public|admin) https?://\S+:(\d+)$", re.MULTILINE)


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, for as long as the block runs: bound
    by this process and never listening, so a connection to it is refused and no
    other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def listening_ports(log: Path, offset: int, process: subprocess.Popen[bytes]) -> dict[str, int]:
    """The ports `process` printed it listens on ({"public": ..., "admin": ...}),
    read from its output `log` past `offset`; waits for both lines."""

    def printed() -> dict[str, int] | None:
        with log.open("rb") as file:
            file.seek(offset)
            found = {m[1].decode(): int(m[2]) for m in _LISTENING.finditer(file.read())}
        if len(found) == 2:
            return found
        if process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode} before listening:\n{tail(log, offset)}"
            )
        return None

    return wait_until(printed, timeout=60, message=f"the listening ports in {log}")


def tail(log: Path, offset: int = 0, lines: int = 30) -> str:
    """The last `lines` lines of `log` past `offset`, for a failure message."""
    with log.open("rb") as file:
        file.seek(offset)
        text = file.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


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
    # The ports it listens on, as it printed them: set by start(), new at each start.
    port: int = field(default=0, init=False)
    admin_port: int = field(default=0, init=False)
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

    @property
    def log(self) -> Path:
        """Where the gateway's stdout and stderr go (appended, across restarts)."""
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def __enter__(self) -> GatewayProcess:
        """`with GatewayProcess(...) as gateway:` starts it (unless it runs already)
        and stops it however the block ends."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, wait_for: str = "/readyz") -> GatewayProcess:
        env = {
            **os.environ,
            "EDGEFN_TOKEN": self.token,
            "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn"),
            # No load balancer to tell: a stop takes ~1 s less (the tests of the delay
            # set it); the suite took 85 s less.
            "EDGEFN_SHUTDOWN_DELAY": "0",
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
            "0",
            "--admin-port",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            *(["--database-url", self.database_url] if self.database_url else []),
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            ports = listening_ports(self.log, offset, self.process)
            self.port, self.admin_port = ports["public"], ports["admin"]
            self.wait_ready(wait_for)
        except BaseException:
            self.kill()  # a gateway that never got ready must not outlive the test
            raise
        return self

    def wait_ready(self, path: str = "/readyz", timeout: float = 60) -> None:
        """Until the admin listener answers 200 on `path` ten times in a row, on new
        connections, so that every worker (SO_REUSEPORT) is likely to have answered."""

        def answers() -> bool:
            self._check_running()
            try:
                url = self.admin_url + path
                return all(httpx.get(url, verify=self.verify).status_code == 200 for _ in range(10))
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=timeout, interval=0.1, message=f"{path} on {self.admin_url}")

    def _check_running(self) -> None:
        assert self.process is not None, "the gateway was never started"
        if self.process.poll() is not None:
            raise AssertionError(
                f"the gateway exited with {self.process.returncode}:\n{tail(self.log)}"
            )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of metric `name` on /metrics whose labels include
        `labels` (0 when there is none)."""
        total = 0.0
        for match in re.finditer(
            rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$",
            self.admin("GET", "/metrics").text,
            re.MULTILINE,
        ):
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
            if labels.items() <= found.items():
                total += float(match[2])
        return total

    def serving_versions(self, function: str) -> dict[str, int]:
        """The version of `function` each live worker serves, by pid (0: deleted),
        from the `edgefn_serving_version` gauge on /metrics."""
        text = self.admin("GET", "/metrics").text
        found = {}
        for match in re.finditer(r"^edgefn_serving_version\{(.*)\} (\S+)$", text, re.MULTILINE):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            if labels.get("function") == function:
                found[labels["pid"]] = int(float(match[2]))
        return found

    def wait_serving(self, function: str, version: int | None = None, timeout: float = 30) -> int:
        """Until every worker serves `version` of `function` (default: its active
        version; 0: deleted); that version."""
        if version is None:
            version = int(
                self.admin("GET", f"/v1/functions/{function}").json()["active"]["version"]
            )

        def everywhere() -> bool:
            self._check_running()
            versions = self.serving_versions(function)
            return len(versions) >= self.workers and set(versions.values()) == {version}

        wait_until(
            everywhere,
            timeout=timeout,
            message=lambda: (
                f"every worker to serve {function} version {version} "
                f"(serving, by pid: {self.serving_versions(function)})"
            ),
        )
        return version

    def wait_logged(self, function: str, request_ids: Iterable[str], timeout: float = 30) -> None:
        """Until the access line of each of `request_ids` is in `function`'s logs
        (workers write their lines in batches; a request's own log lines come first)."""
        wanted = set(request_ids)

        missing = set(wanted)

        def logged() -> bool:
            lines = self.admin("GET", f"/v1/functions/{function}/logs?limit=1000").json()
            missing.intersection_update(
                wanted - {r["request_id"] for r in lines if r["kind"] == "access"}
            )
            return not missing

        wait_until(
            logged, timeout=timeout, message=lambda: f"the access lines of {sorted(missing)}"
        )

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token}"}
        return httpx.request(
            method, self.admin_url + path, headers=headers, timeout=120, verify=self.verify,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(self.public_url + path, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        """SIGTERM the gateway (it drains and stops its workers); SIGKILL it and its
        workers when that takes more than 15 s, and any worker it left behind."""
        if self.process is not None and self.process.poll() is None:
            workers = children(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
            _kill_survivors(workers)

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


def _kill_survivors(pids: list[int], grace: float = 5.0) -> None:
    """SIGKILL those of `pids` still running after `grace` seconds."""
    with contextlib.suppress(WaitTimeout):
        wait_until(
            lambda: not any(running(pid) for pid in pids),
            timeout=grace,
            message=f"processes {pids} to exit",
        )
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@contextmanager
def ended(process: subprocess.Popen[bytes], grace: float = 15) -> Iterator[subprocess.Popen[bytes]]:
    """`process` (a load generator, `edgefn dev`, ...), ended on the way out however
    the block ends: SIGTERM, then SIGKILL for it and its children after `grace`
    seconds; its children left behind are killed too."""
    try:
        yield process
    finally:
        if process.poll() is None:
            started = children(process.pid)
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                for pid in children(process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait()
            _kill_survivors(started)


def start_dev(
    directory: Path,
    log: Path,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """`edgefn dev directory [extra...]` on a port it picks, its output appended to
    `log`, with `env` added to its environment; the process and that port. End it
    with `ended`. Its data directory goes beside `log` unless `env` sets TMPDIR: one
    that `kill -9` leaves behind is then the test's to remove, not /tmp's."""
    command = [sys.executable, "-m", "edgefn_platform", "dev", str(directory), *(extra or [])]
    with log.open("ab") as output:
        offset = output.tell()
        process = subprocess.Popen(
            [*command, "--port", "0"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "EDGEFN_CACHE_DIR": str(ROOT / ".cache" / "edgefn"),
                "TMPDIR": str(log.parent),
                **(env or {}),
            },
        )
    try:
        return process, listening_ports(log, offset, process)["public"]
    except BaseException:
        process.kill()
        process.wait()
        raise


def deploy_as(
    gateway: GatewayProcess, directory: Path, name: str, manifest: str | None = None
) -> None:
    """The function in `directory`, built once, deployed as `name` through the admin
    API, with `manifest` for its own if given: one build serves any number of names."""
    from edgefn_platform import build  # the builder is only needed by tests that deploy

    text = manifest or (directory / "edgefn.toml").read_text()
    manifest = re.sub(r'^name = "[^"]*"', f'name = "{name}"', text, count=1, flags=re.MULTILINE)
    response = gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={"component": ("c.wasm", build(directory).path.read_bytes())},
    )
    assert response.status_code == 201, response.text


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


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used so far, user and system, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
