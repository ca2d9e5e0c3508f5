"""What `edgefn dev` keeps on the developer's machine: its gateway's settings,
data directory and secrets."""

from __future__ import annotations

import json
from pathlib import Path

from edgefn_contract.secrets import check_name
from edgefn_runtime import EdgefnError

from ..builder import BUILD_DIR

__all__ = ["DevError", "SECRETS_FILE", "data_dir", "parse_secret", "read_secrets", "write_policy"]

# Beside each function's build output, git-ignored with it: `NAME=VALUE` lines.
SECRETS_FILE = f"{BUILD_DIR}/dev-secrets"
# Outbound HTTP may reach these in dev (an origin on the developer's machine);
# a gateway blocks them unless its operator allows them.
LOOPBACK = ("127.0.0.0/8", "::1/128")


class DevError(EdgefnError):
    """`edgefn dev` cannot start as asked; the message says why."""

    code = "dev_failed"
    status = 400


def data_dir(directory: Path) -> Path:
    """The dev gateway's registry, key-value stores and snapshots: in the (first)
    function's build folder, so key-value data outlives a restart of `edgefn dev`."""
    return directory / BUILD_DIR / "dev"


def write_policy(path: Path, *, cache: bool) -> Path:
    """The dev gateway's config file: loopback origins allowed, the edge cache
    off unless asked (what a developer changes should show at once)."""
    networks = json.dumps(list(LOOPBACK))
    path.write_text(
        f"[outbound]\nallowed_networks = {networks}\n\n[cache]\nenabled = {json.dumps(cache)}\n",
        encoding="utf-8",
    )
    return path


def parse_secret(text: str, source: str) -> tuple[str, str]:
    """`NAME=VALUE` -> (NAME, VALUE); `DevError` names `source` when it is not one."""
    name, equals, value = text.partition("=")
    name = name.strip()
    if not equals:
        raise DevError(f"{source}: expected NAME=VALUE, with no '=' in it")
    problem = check_name(name)
    if problem is not None:
        raise DevError(f"{source}: {problem}")
    return name, value


def read_secrets(directory: Path) -> dict[str, str]:
    """The function's local secrets file, if it has one: `NAME=VALUE` lines, `#`
    comments and blank lines ignored; the value is the rest of the line, as is."""
    path = directory / SECRETS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise DevError(f"cannot read {path}: {exc}") from None
    secrets = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = parse_secret(line, f"{path}, line {number}")
            secrets[name] = value
    return secrets
