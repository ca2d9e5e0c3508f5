"""`edgefn.toml`: a function's name, entry point, route, limits, env and assets."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefn_contract.kv import check_store
from edgefn_contract.secrets import check_name as check_secret_name
from edgefn_runtime import MIN_MEMORY, EdgefnError, Limits
from edgefn_runtime.capabilities.outbound import AllowedHosts

from ._units import parse_count, parse_duration, parse_size

__all__ = [
    "LIMIT_PARSERS",
    "MANIFEST_FILE",
    "Manifest",
    "check_function_name",
    "ManifestError",
    "load_manifest",
    "parse_limits",
    "parse_manifest",
    "read_manifest",
]

MANIFEST_FILE = "edgefn.toml"

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRY = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ROUTE = re.compile(r"/|(/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")
_REQUIREMENT = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?\s*([<>=!~]=?[^;\s]+\s*,?\s*)*"
)

# Limit key -> (parser, what it accepts). The keys are `Limits` fields, plus the
# gateway's `concurrency`; manifests, the gateway config and `edgefn limits` share them.
LIMIT_PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "memory": (parse_size, 'a size such as "64MiB" (at least 16MiB)'),
    "fuel": (parse_count, "a whole number of fuel units such as 2_000_000_000"),
    "timeout": (parse_duration, 'a duration such as "2s" or "500ms"'),
    "max_body": (parse_size, 'a size such as "10MiB"'),
    "max_response": (parse_size, 'a size such as "10MiB"'),
    "max_log": (parse_size, 'a size such as "64KiB"'),
    "max_image_pixels": (parse_count, "a number of pixels such as 40e6"),
    "max_kv_value": (parse_size, 'a size such as "1MiB"'),
    "max_kv_store": (parse_size, 'a size such as "100MiB"'),
    "max_kv_keys": (parse_count, "a number of keys such as 100_000"),
    "max_kv_ops": (parse_count, "a number of operations such as 1000"),
    "concurrency": (parse_count, "a number of requests in flight such as 16"),
}
# `{{ NAME }}` in an `allowed_outbound_hosts` entry, Spin's template syntax,
# names a variable of the manifest's own [env] table.
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_RESERVED_ROUTES = {"/", "/healthz", "/readyz"}
_KEYS = {
    "name",
    "entry",
    "requirements",
    "route",
    "limits",
    "env",
    "assets",
    "reuse",
    "allowed_outbound_hosts",
    "cache",
    "key_value_stores",
    "secrets",
    "stream_request_body",
}
# Requests one instance serves with `reuse = true`.
DEFAULT_REUSE = 1000


class ManifestError(EdgefnError, ValueError):
    """`edgefn.toml` is missing, does not parse, or has fields out of range.

    `problems` lists each one as "field: what is wrong and what is allowed".
    Still a ValueError, as it was before edgefn had one error tree.
    """

    code = "invalid_manifest"
    status = 400

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Manifest:
    name: str
    entry: str = "app:app"
    route: str = ""
    requirements: tuple[str, ...] = ()
    limits: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    assets: str | None = None
    # Requests one instance may serve in turn; 0 is a fresh instance for each.
    reuse: int = 0
    # As written, `{{ NAME }}` templates unresolved; `outbound_hosts()` resolves them.
    allowed_outbound_hosts: tuple[str, ...] = ()
    # False: the gateway's edge cache never stores or serves this function's responses.
    cache: bool = True
    # The key-value stores it may open, and the secrets it may read (names only:
    # the operator sets their values, `edgefn secrets set`).
    key_value_stores: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    # True: the function starts once a request's head has arrived and reads its
    # body as the client sends it (`request.stream()`), instead of once it is whole.
    stream_request_body: bool = False

    @property
    def entry_module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def entry_attribute(self) -> str:
        return self.entry.partition(":")[2]

    def outbound_hosts(self) -> tuple[str, ...]:
        """`allowed_outbound_hosts` with each `{{ NAME }}` replaced by `env[NAME]`."""
        return tuple(substitute(entry, self.env) for entry in self.allowed_outbound_hosts)

    def grants(self) -> dict[str, Any]:
        """What the function may use of each host capability (`Engine.load(grants=)`),
        and its name (`"function"`): its namespace in the origin cache, its
        key-value stores and its secrets."""
        grants: dict[str, Any] = {"function": self.name}
        hosts = self.outbound_hosts()
        if hosts:
            grants["outbound"] = AllowedHosts.parse(hosts)
        if self.key_value_stores:
            grants["kv"] = frozenset(self.key_value_stores)
        if self.secrets:
            grants["secrets"] = frozenset(self.secrets)
        if self.stream_request_body:
            grants["request_stream"] = True
        return grants

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, as the registry stores it."""
        data = dataclasses.asdict(self)
        data["requirements"] = list(self.requirements)
        data["allowed_outbound_hosts"] = list(self.allowed_outbound_hosts)
        data["key_value_stores"] = list(self.key_value_stores)
        data["secrets"] = list(self.secrets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The inverse of `to_dict`; keys it does not know are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["requirements"] = tuple(values.get("requirements", ()))
        # Manifests stored before outbound HTTP have no such key: nothing allowed.
        values["allowed_outbound_hosts"] = tuple(values.get("allowed_outbound_hosts", ()))
        values["key_value_stores"] = tuple(values.get("key_value_stores", ()))
        values["secrets"] = tuple(values.get("secrets", ()))
        return cls(**values)

    def resolve_limits(self, defaults: Limits | None = None) -> Limits:
        """The sandbox limits this function asked for, the rest filled from `defaults`."""
        sandbox = {k: v for k, v in self.limits.items() if k != "concurrency"}
        return dataclasses.replace(defaults or Limits(), **sandbox)


def check_function_name(name: str) -> str | None:
    """What is wrong with a function's name, or None."""
    if _NAME.fullmatch(name):
        return None
    return f"function names are 1-63 lowercase letters, digits or '-' (a DNS label), got {name!r}"


def load_manifest(directory: Path) -> Manifest:
    """Read and check `directory/edgefn.toml`."""
    return read_manifest(directory)[1]


def read_manifest(directory: Path) -> tuple[str, Manifest]:
    """`directory/edgefn.toml`'s text, read once, and the manifest it holds, checked."""
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(str(path), ["file not found; `edgefn new NAME` creates one"]) from None
    manifest = parse_manifest(text, source=str(path))
    if manifest.assets is not None and not (directory / manifest.assets).is_dir():
        raise ManifestError(str(path), [f"assets: directory {manifest.assets!r} does not exist"])
    return text, manifest


def parse_manifest(text: str, source: str = MANIFEST_FILE) -> Manifest:
    """Parse manifest TOML, reporting every mistake with its field name."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(source, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    for key in sorted(set(data) - _KEYS):
        problems.append(f"{key}: unknown field (allowed: {', '.join(sorted(_KEYS))})")

    name = data.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append(
            f"name: must be 1-63 lowercase letters, digits or '-', not starting or ending "
            f"with '-' (a DNS label), got {name!r}"
        )
    entry = data.get("entry", "app:app")
    if not isinstance(entry, str) or not _ENTRY.fullmatch(entry):
        problems.append(f'entry: must be "module:attribute" such as "app:app", got {entry!r}')
    route = data.get("route", f"/{name}")
    if isinstance(route, str) and route in _RESERVED_ROUTES:
        # "/" would take every path no other function owns, and the health paths
        # belong to the load balancer's probes.
        problems.append(f'route: {route!r} is reserved; use a prefix such as "/{name}"')
    elif not isinstance(route, str) or not _ROUTE.fullmatch(route) or _has_dot_segment(route):
        problems.append(
            f'route: must be an absolute path such as "/{name}" with no empty, "." or ".." '
            f"segments and no trailing '/', got {route!r}"
        )
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(
        isinstance(r, str) and _REQUIREMENT.fullmatch(r) for r in requirements
    ):
        problems.append(
            f'requirements: must be a list of pip requirement strings such as ["attrs>=23"], '
            f"got {requirements!r}"
        )
    limits = parse_limits(data.get("limits", {}), "limits", problems)
    env = data.get("env", {})
    if not isinstance(env, dict):
        problems.append(f'env: must be a table of NAME = "value", got {env!r}')
        env = {}
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key) or not isinstance(value, str):
            problems.append(
                f"env.{key}: names must be identifiers and values strings, got {value!r}"
            )
    assets = data.get("assets")
    if assets is not None and (
        not isinstance(assets, str)
        or Path(assets).is_absolute()
        or not Path(assets).parts
        or any(part == ".." or part.startswith(".") for part in Path(assets).parts)
    ):
        # Not the folder itself, nor a dot-folder: they hold .edgefn/ (the build, the
        # local secrets of `edgefn dev`) and .git/, which would be deployed as assets.
        problems.append(
            "assets: must be a directory inside the function folder, not the folder itself "
            f"nor a dot-folder, got {assets!r}"
        )

    reuse = data.get("reuse", False)
    if reuse is True:
        reuse = DEFAULT_REUSE
    elif reuse is False:
        reuse = 0
    elif not isinstance(reuse, int) or reuse < 0:
        problems.append(
            f"reuse: must be true, false or the number of requests one instance may serve, "
            f"got {reuse!r}"
        )

    outbound = data.get("allowed_outbound_hosts", [])
    if not isinstance(outbound, list):
        problems.append(
            'allowed_outbound_hosts: must be a list of "scheme://host[:port]" strings such as '
            f'["https://images.example.com"], got {outbound!r}'
        )
        outbound = []
    for index, host in enumerate(outbound):
        problem = check_outbound_entry(host, env if isinstance(env, dict) else {})
        if problem:
            problems.append(f"allowed_outbound_hosts[{index}]: {problem}")

    cache = data.get("cache", True)
    if not isinstance(cache, bool):
        problems.append(f"cache: must be true or false, got {cache!r}")
    stream_request_body = data.get("stream_request_body", False)
    if not isinstance(stream_request_body, bool):
        problems.append(f"stream_request_body: must be true or false, got {stream_request_body!r}")

    stores = _names(data, "key_value_stores", check_store, '["default"]', problems)
    secrets = _names(data, "secrets", check_secret_name, '["ORIGIN_TOKEN"]', problems)

    if problems:
        raise ManifestError(source, problems)
    assert isinstance(name, str)
    return Manifest(
        name=name,
        entry=entry,
        route=route,
        requirements=tuple(requirements),
        limits=limits,
        env=dict(env),
        assets=assets,
        reuse=reuse,
        allowed_outbound_hosts=tuple(outbound),
        cache=bool(cache),
        key_value_stores=stores,
        secrets=secrets,
        stream_request_body=stream_request_body,
    )


def _names(
    data: dict[str, Any],
    key: str,
    check: Callable[[object], str | None],
    example: str,
    problems: list[str],
) -> tuple[str, ...]:
    """A list of unique names such as `key_value_stores`, each passing `check`."""
    names = data.get(key, [])
    if not isinstance(names, list):
        problems.append(f"{key}: must be a list of names such as {example}, got {names!r}")
        return ()
    for index, name in enumerate(names):
        problem = check(name)
        if problem:
            problems.append(f"{key}[{index}]: {problem}")
        elif names.index(name) != index:
            problems.append(f"{key}[{index}]: {name!r} is listed twice")
    return tuple(names)


def substitute(entry: str, env: dict[str, Any]) -> str:
    """`entry` with each `{{ NAME }}` replaced by `env[NAME]` (KeyError if missing)."""
    return _TEMPLATE.sub(lambda found: str(env[found.group(1)]), entry)


def check_outbound_entry(entry: Any, env: dict[str, Any]) -> str | None:
    """What is wrong with one `allowed_outbound_hosts` entry, or None."""
    if not isinstance(entry, str):
        return f'must be a string such as "https://images.example.com", got {entry!r}'
    for found in _TEMPLATE.finditer(entry):
        variable = found.group(1)
        if not _ENV_NAME.fullmatch(variable):
            return (
                f"{{{{ {variable} }}}}: a template names an [env] variable, "
                "such as {{ ORIGIN }}"
            )
        if variable not in env:
            known = ", ".join(sorted(env)) or "none"
            return (
                f"{{{{ {variable} }}}} names no variable of [env] (defined: {known}); "
                f'add {variable} = "https://..." to [env]'
            )
    if "{" in _TEMPLATE.sub("", entry) or "}" in _TEMPLATE.sub("", entry):
        return f"{entry!r}: templates are written {{{{ NAME }}}}, naming an [env] variable"
    try:
        AllowedHosts.parse([substitute(entry, env)])
    except ValueError as exc:
        via = "" if substitute(entry, env) == entry else f" (from {entry!r})"
        return f"{exc}{via}"
    return None


def parse_limits(table: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """Parse a table of limits; each mistake is appended to `problems` as
    "<where>.<key>: what is wrong"."""
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table such as [{where}], got {table!r}")
        return {}
    limits: dict[str, Any] = {}
    for key, value in table.items():
        if key not in LIMIT_PARSERS:
            allowed = ", ".join(LIMIT_PARSERS)
            problems.append(f"{where}.{key}: unknown limit (allowed: {allowed})")
            continue
        parse, accepts = LIMIT_PARSERS[key]
        try:
            limits[key] = parse(value)
        except ValueError:
            problems.append(f"{where}.{key}: expected {accepts}, got {value!r}")
    if limits.get("memory", MIN_MEMORY) < MIN_MEMORY:
        problems.append(f"{where}.memory: must be at least 16MiB, got {table['memory']!r}")
    if limits.get("concurrency", 1) < 1:
        problems.append(f"{where}.concurrency: must be at least 1")
    return limits


def _has_dot_segment(route: str) -> bool:
    return any(segment in ("", ".", "..") for segment in route.split("/")[1:])
