"""Gateway settings: one dataclass, filled from CLI options or `EDGEFN_*` variables.

Every default is written here, once: `edgefn serve` passes only the options the
operator gave. `load()` then reads what the settings point at (the admin token,
the policy file), once per gateway, in the process that starts it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edgefn_runtime import EdgefnError, Engine
from edgefn_runtime.cache import HttpCache
from edgefn_runtime.capabilities import installed
from edgefn_runtime.capabilities.kv import KeyValueBackend
from edgefn_runtime.capabilities.secrets import SecretSource

from ..secrets import Cipher, load_keys
from .policy import ConfigError, Policy, load_policy

__all__ = ["DataDirError", "GatewayConfig", "TokenError", "check_token", "load_token"]

TOKEN_FILE = "admin-token"

log = logging.getLogger("edgefn.gateway")


# The longest --shutdown-delay or --drain-timeout: an hour.
_LONGEST_STOP = 3600.0


@dataclass
class GatewayConfig:
    """Where the gateway listens, where it keeps its data, and how many workers it runs."""

    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    data_dir: Path = field(default_factory=lambda: Path(".edgefn-data"))
    # A PostgreSQL URL: the registry gateways share; None: the embedded SQLite one
    # in `data_dir`, which then holds only this gateway's caches.
    database_url: str | None = None
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    token: str | None = None
    # AOT artifacts; defaults to `<data_dir>/aot`.
    cache_dir: Path | None = None
    max_upload: int = 100 * 1024 * 1024
    # The operator's limits and backpressure (see policy.py); None: built-in defaults.
    config_file: Path | None = None
    # On SIGTERM: how long /readyz reports not-ready before listeners close, and how
    # long requests in flight may then take to finish.
    shutdown_delay: float = 1.0
    drain_timeout: float = 30.0
    # Slow clients: a request's head must arrive within `header_timeout` seconds,
    # its body within `body_timeout` seconds after that.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # PEM files: the admin listener speaks HTTPS when both are set.
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    # How often each worker looks for a new active version.
    refresh_seconds: float = 0.25
    # How long a deploy, rollback, delete or limit change waits for every worker
    # of this gateway to serve it before it answers 504 `not_live`.
    rollout_timeout: float = 30.0
    # Seconds a worker must be quiet before it gives back the memory a burst left
    # (emptied pool slots, idle reusable instances, malloc's free heap); 0: never.
    memory_release_after: float = 3.0
    # The operator's secrets key(s): EDGEFN_SECRETS_KEY (comma-separated, newest
    # first) or a file of them, one per line (see `edgefn_platform.secrets`).
    secrets_key: str | None = field(default=None, repr=False)
    secrets_key_file: Path | None = None
    # `edgefn dev`'s gateway: it links the dev runner's capability, so it serves
    # versions deployed with a snapshot of their folder (`Deployer.deploy(dev_source=)`).
    dev: bool = False
    # `edgefn dev`: each function's key-value stores in its own directory, by function
    # name; None: in the registry's database.
    kv_dirs: dict[str, Path] | None = None
    # Set by `load()`: the admin token in use and the operator's policy. Worker
    # processes get them with the config instead of reading them again.
    admin_token: str | None = field(default=None, init=False, repr=False)
    policy: Policy | None = field(default=None, init=False, repr=False)
    secrets_keys: tuple[str, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if (self.admin_tls_cert is None) != (self.admin_tls_key is None):
            raise ValueError("admin TLS needs both a certificate and a key")
        for name in ("shutdown_delay", "drain_timeout"):
            value = getattr(self, name)
            if not 0 <= value <= _LONGEST_STOP:  # nan and inf too: a stop that never ends
                what = name.replace("_", " ")
                raise ValueError(f"{what} must be 0 to {_LONGEST_STOP:g} seconds, got {value}")
        if self.rollout_timeout <= 0:
            raise ValueError(f"rollout timeout must be positive, got {self.rollout_timeout}")
        if self.memory_release_after < 0:
            delay = self.memory_release_after
            raise ValueError(f"memory release delay must be 0 (never) or positive, got {delay}")

    def load(self) -> GatewayConfig:
        """Read the admin token (`load_token`) and the policy (`load_policy`) once.

        Raises DataDirError, TokenError, ConfigError (also for a malformed variable
        the engine reads) or SecretsKeyError; returns the
        config, loaded."""
        for directory in (self.data_dir, self.aot_cache_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                message = f"cannot use {directory} as a directory: {exc.strerror}"
                raise DataDirError(message) from None
        if self.admin_token is None:
            self.admin_token = load_token(self)
        if self.policy is None:
            self.policy = load_policy(self.config_file)
        if self.secrets_keys is None:
            self.secrets_keys = load_keys(self.secrets_key, self.secrets_key_file) or ()
        try:  # here, not in each worker, which would die at start and be restarted
            Engine.check_environment()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self

    def secrets_cipher(self) -> Cipher | None:
        """The cipher of the operator's secrets keys; None: no key was given."""
        keys = self.load().secrets_keys
        return Cipher(keys) if keys else None

    @property
    def loaded_token(self) -> str:
        """The admin token, loaded first if need be."""
        token = self.load().admin_token
        assert token is not None, "load() sets it"
        return token

    @property
    def loaded_policy(self) -> Policy:
        """The operator's policy, loaded first if need be."""
        policy = self.load().policy
        assert policy is not None, "load() sets it"
        return policy

    @property
    def metrics_dir(self) -> Path:
        """Where every worker keeps its Prometheus values."""
        return self.data_dir / "metrics"

    @property
    def workers_dir(self) -> Path:
        """Where every worker reports what it serves (see `_rollout.py`)."""
        return self.data_dir / "workers"

    @property
    def aot_cache_dir(self) -> Path:
        """The directory `Engine` keeps its `aot/` folder in."""
        return self.cache_dir or self.data_dir

    @property
    def admin_exposed_in_clear(self) -> bool:
        """Whether the admin API listens beyond loopback without TLS."""
        loopback = self.admin_host in ("127.0.0.1", "::1", "localhost")
        return not loopback and self.admin_tls_cert is None

    def open_engine(
        self,
        cache: HttpCache | None = None,
        kv: KeyValueBackend | None = None,
        secrets: SecretSource | None = None,
    ) -> Engine:
        """An engine with the AOT cache and the operator's outbound policy; the
        functions' fetches are cached in `cache` (the edge cache), their
        key-value stores kept by `kv`, their secrets read from `secrets`, if given."""
        policy = self.loaded_policy
        capabilities = installed(
            outbound=policy.outbound,
            cache=cache,
            kv=kv,
            secrets=secrets,
            kv_max_value=policy.maximums["max_kv_value"],
            dev=self.dev,
        )
        return Engine(
            cache_dir=self.aot_cache_dir,
            capabilities=capabilities,
            release_after=self.memory_release_after or None,
        )

    def public_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


class DataDirError(EdgefnError):
    """The data or cache directory cannot be created."""

    code = "unusable_data_dir"


class TokenError(EdgefnError, ValueError):
    """The admin token is unusable (empty, or only whitespace)."""

    code = "unusable_admin_token"


def check_token(token: str, source: str = "--token/EDGEFN_TOKEN") -> str:
    """`token`, or TokenError naming `source` when it is empty or only whitespace:
    `Authorization: Bearer ` (with nothing after it) must never authenticate."""
    if not token.strip():
        hint = "remove the file" if source.endswith(TOKEN_FILE) else "leave it unset"
        raise TokenError(
            f"the admin token from {source} is empty or only whitespace: set a long "
            f"random one (openssl rand -hex 32), or {hint} to have one generated"
        )
    return token


def load_token(config: GatewayConfig) -> str:
    """The admin token: `config.token` (from `EDGEFN_TOKEN`), else the one stored in
    the data directory, else a new one written there with mode 0600.

    Raises TokenError for an empty or whitespace-only token; warns (on the
    `edgefn.gateway` logger) when an existing token file is open to group or others.
    """
    if config.token is not None:
        return check_token(config.token)
    path = config.data_dir / TOKEN_FILE
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with path.open() as file:
            mode = os.fstat(file.fileno()).st_mode
            token = file.read().strip()
    except FileNotFoundError:
        pass
    else:
        if mode & 0o066:
            log.warning(
                "the admin token file %s can be read or written by its group or others "
                "(mode %s): run chmod 600 %s",
                path,
                oct(stat.S_IMODE(mode)),
                path,
            )
        return check_token(token, str(path))
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token
