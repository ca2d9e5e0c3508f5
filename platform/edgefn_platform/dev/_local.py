"""What `edgefn dev` keeps on the developer's machine: its gateway's settings,
the functions' key-value data and their local secrets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from edgefn_contract.secrets import check_name
from edgefn_runtime import EdgefnError

from ..builder import BUILD_DIR

__all__ = [
    "LOOPBACK",
    "SECRETS_FILE",
    "DevError",
    "kv_dir",
    "parse_secret",
    "read_secrets",
    "write_policy",
]

# Beside each function's build output, git-ignored with it: `NAME=VALUE` lines.
SECRETS_FILE = f"{BUILD_DIR}/dev-secrets"
# Outbound HTTP may reach these in dev (an origin on the developer's machine);
# a gateway blocks them unless its operator allows them.
LOOPBACK = ("127.0.0.0/8", "::1/128")


class DevError(EdgefnError):
    """`edgefn dev` cannot start as asked; the message says why."""

    code = "dev_failed"
    status = 400


def kv_dir(directory: Path) -> Path:
    """Where `edgefn dev` keeps a function's key-value stores: in its build folder,
    so that they outlive a restart of `edgefn dev`."""
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


def parse_secret(
    text: str, source: str, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """`NAME=VALUE` -> (NAME, VALUE); with `environ`, a bare `NAME` takes the value of
    the variable NAME there (out of `ps` and the shell's history). `DevError` names
    `source`, never the text: it may be a value typed in the wrong place."""
    name, equals, value = text.partition("=")
    name = name.strip()
    if check_name(name) is not None:
        raise DevError(
            f"{source}: expected NAME=VALUE, NAME being letters, digits and '_', not "
            "starting with a digit"
        )
    if equals:
        return name, value
    if environ is None:
        raise DevError(f"{source}: expected NAME=VALUE, with no '=' in it")
    if name not in environ:
        raise DevError(f"{source}: no '=', and no variable of that name in the environment")
    return name, environ[name]


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
