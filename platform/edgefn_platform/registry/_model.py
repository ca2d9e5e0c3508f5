"""Registry records, errors and the interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgefn_runtime import EdgefnError

__all__ = [
    "LOG_LINES_KEPT",
    "PREFIX_MAX_LENGTH",
    "PURGES_KEPT",
    "Blob",
    "CorruptArtifact",
    "FunctionNotFound",
    "FunctionRecord",
    "InvalidPrefix",
    "LogRecord",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "RouteConflict",
    "StorageFull",
    "VersionNotFound",
    "VersionRecord",
    "check_prefix",
    "logs_since",
]


# Lines kept per function for `edgefn logs`, by every backend.
LOG_LINES_KEPT = 1000

# Purges kept per function: every cache lookup of the function's entries checks
# each of them, so more collapse into one purge of everything ("/").
PURGES_KEPT = 100
# The longest path prefix a purge may name.
PREFIX_MAX_LENGTH = 1024


class RegistryError(EdgefnError):
    """A registry operation was refused; the message says why."""

    code = "registry_error"
    status = 400


class RegistryUnavailable(RegistryError):
    """The registry's database cannot be reached; what is loaded keeps serving."""

    code = "registry_unavailable"
    status = 503


class FunctionNotFound(RegistryError):
    code = "function_not_found"
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"no function named {name!r} is deployed")
        self.name = name


class VersionNotFound(RegistryError):
    code = "version_not_found"
    status = 404

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"function {name!r} has no version {version}")


class InvalidPrefix(RegistryError):
    """A purge's path prefix that no request path could start with, or too long."""

    code = "invalid_prefix"
    status = 400

    def __init__(self, prefix: str, reason: str) -> None:
        shown = prefix if len(prefix) <= 80 else prefix[:80] + "..."
        super().__init__(f"cannot purge prefix {shown!r}: {reason}")


def check_prefix(prefix: str) -> str:
    """`prefix` if a purge may name it: a path relative to the function's route as the
    function sees it (decoded, without the query), so starting with "/"."""
    if not prefix.startswith("/"):
        raise InvalidPrefix(prefix, 'a path prefix starts with "/" (e.g. "/img/")')
    if len(prefix) > PREFIX_MAX_LENGTH:
        raise InvalidPrefix(prefix, f"longer than {PREFIX_MAX_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise InvalidPrefix(prefix, "it contains a control character")
    if "?" in prefix:
        raise InvalidPrefix(
            prefix, "the query is not part of it: a purge covers every query of a path"
        )
    return prefix


class RouteConflict(RegistryError):
    code = "route_conflict"
    status = 409

    def __init__(self, route: str, owner: str) -> None:
        super().__init__(f"route {route} is already served by function {owner!r}")
        self.route = route
        self.owner = owner


class StorageFull(RegistryError):
    """The data directory or the database ran out of space; nothing was stored.

    Each backend raises it for its own ways of running out (ENOSPC, SQLITE_FULL,
    PostgreSQL's disk_full), so no caller needs to know the database driver."""

    code = "insufficient_storage"
    status = 507

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "the gateway's data directory or database is full; nothing was stored and the "
            "active version is unchanged. Free space (or delete unused functions) "
            "and deploy again"
        )


class CorruptArtifact(RegistryError):
    """A stored artifact is missing or does not match its sha256. The registry's
    fault, not the caller's: a 500, where a bad upload is a 400."""

    code = "corrupt_artifact"
    status = 500


@dataclass(frozen=True)
class Blob:
    """A file other gateways need beside a version's component: its assets archive
    (`assets/<sha256>`) or its compiled form (`compiled/<sha256>-<engine key>`)."""

    key: str
    path: Path


@dataclass(frozen=True)
class VersionRecord:
    """One immutable deployed version of a function."""

    function: str
    version: int
    route: str
    sha256: str
    size: int
    manifest: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class FunctionRecord:
    """A function and its active version."""

    name: str
    route: str
    active: VersionRecord
    versions: int
    updated_at: float
    # Limits the operator set live (`edgefn limits`), over the manifest's.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogRecord:
    """One line of a function's recent logs: its own output, or an access line."""

    id: int
    function: str
    time: float
    request_id: str
    kind: str  # "log" or "access"
    line: str


@dataclass(frozen=True)
class SecretRecord:
    """One stored secret: `value` is its Fernet token (`edgefn_platform.secrets`),
    never the plaintext; `set_at` a Unix time."""

    function: str
    name: str
    value: bytes
    set_at: float


class Registry(Protocol):
    """What the gateway needs from a registry backend."""

    # Where it is, for messages: a file, or a database without its password.
    location: str

    def deploy(
        self,
        name: str,
        route: str,
        manifest: dict[str, Any],
        component: Path,
        sha256: str,
        blobs: Sequence[Blob] = (),
    ) -> VersionRecord:
        """Store `component` (and `blobs`, for backends that other gateways share) as
        the next version of `name` and activate it, atomically. Redeploying exactly the
        active version (same component and manifest) adds none and returns it."""

    def activate(self, name: str, version: int) -> FunctionRecord:
        """Make an existing version the active one."""

    def delete(self, name: str) -> list[str]:
        """Remove a function, its versions and the artifacts no other version uses;
        return the sha256 of each artifact removed."""

    def sweep(self, partial: bool = True) -> list[Path]:
        """Remove stored artifacts no version references (left by a crash), and
        half-written ones unless `partial` is false; the paths removed."""

    def set_overrides(
        self, name: str, limits: dict[str, Any], merge: bool = False
    ) -> FunctionRecord:
        """Replace the operator's live limit overrides of `name` ({} resets them), or
        with `merge`, add `limits` to them in the same transaction (concurrent changes
        of different limits, through different gateways, all stick)."""

    def purge(self, name: str, prefix: str = "/") -> float:
        """Record that `name`'s cached responses for paths (relative to its route)
        starting with `prefix` are gone, as of now; the time recorded. Announced like
        any change, so every worker of every gateway applies it at its next refresh."""

    def purges(self) -> dict[str, list[tuple[str, float]]]:
        """Each function's purges: (path prefix, time), at most PURGES_KEPT each."""

    def set_secret(self, function: str, name: str, value: bytes) -> float:
        """Store the secret `name` of `function` (its encrypted token; the function
        need not be deployed yet); the time recorded. Announced like any change."""

    def delete_secret(self, function: str, name: str) -> bool:
        """Remove a secret; whether there was one. Announced like any change."""

    def reencrypt_secrets(self, transform: Callable[[bytes], bytes]) -> int:
        """Replace every secret's token by `transform(token)` in one transaction
        (a key rotation); how many. Announced like any change."""

    def secrets(self, function: str | None = None) -> list[SecretRecord]:
        """The stored secrets, of `function` or of every function, by function and name."""

    def functions(self) -> list[FunctionRecord]: ...

    def function(self, name: str) -> FunctionRecord: ...

    def versions(self, name: str) -> list[VersionRecord]: ...

    def artifact_path(self, sha256: str) -> Path:
        """A local file holding the component with this sha256 (fetched if need be);
        `CorruptArtifact` if the registry has none, or only a corrupt one."""

    def fetch(self, key: str, target: Path) -> bool:
        """Write the blob `key` to `target`, verified by its sha256; False if the
        registry has none (the embedded one never has: its node keeps its own)."""

    def change_token(self) -> Any:
        """A value that changes whenever anything was deployed, activated or deleted."""

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; whether the registry may have changed since
        the last call (a change was announced, or the backend cannot tell)."""

    def append_logs(self, records: Iterable[tuple[str, float, str, str, str]]) -> None:
        """Add (function, time, request_id, kind, line) records, keeping the newest only."""

    def logs(
        self, name: str, after: int = 0, limit: int = 200, request_id: str | None = None
    ) -> list[LogRecord]:
        """The newest `limit` lines of `name` after the line with id `after`, oldest
        first; only those of `request_id` when given."""

    def close(self) -> None: ...


def logs_since(
    registry: Registry, name: str, after: int, request_id: str | None = None
) -> tuple[list[LogRecord], bool]:
    """Every line of `name` the registry still keeps after the line `after`, oldest
    first, and whether retention has passed `after` (lines after it may have been
    dropped before they were read): what a reader following the logs needs."""
    # From the cursor's own line on, to tell whether it is still kept.
    rows = registry.logs(name, max(after - 1, 0), LOG_LINES_KEPT + 1, request_id)
    skipped = after > 0 and bool(rows) and rows[0].id != after
    return [r for r in rows if r.id > after], skipped
