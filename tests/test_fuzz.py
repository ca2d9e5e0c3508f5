"""Property-based fuzzing (hypothesis, bounded) of what parses untrusted text:
the manifest parser, the gateway's route table and the SDK's router.
`make fuzz` runs the same properties with many more examples."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import attacks
from edgefn import App, Request
from edgefn.testing import TestClient
from edgefn_platform.gateway._errors import GatewayError
from edgefn_platform.gateway._functions import FunctionTable
from edgefn_platform.gateway._target import route
from edgefn_platform.manifest import ManifestError, parse_manifest

AREA = "Fuzzing (tests/test_fuzz.py)"
EXAMPLES = int(os.environ.get("EDGEFN_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def recorded(attack: str, observed: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """A hypothesis test that records its row in the attack table once every
    example it generated held (and only then)."""

    def wrap(fuzzed: Callable[[], None]) -> Callable[[], None]:
        def test() -> None:
            fuzzed()
            attacks.record(AREA, attack, observed)

        return test

    return wrap


_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_KEYS = ["name", "entry", "route", "limits", "env", "assets", "reuse", "requirements", "x"]
_LIMIT_KEYS = ["memory", "fuel", "timeout", "max_body", "max_response", "concurrency", "x"]

scalars = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["x", "/x", "/", "//x", "/x/../y", "64MiB", "2s", "../x", "аdmin", "x\u200b"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
tables = st.dictionaries(st.sampled_from(_LIMIT_KEYS) | st.text(max_size=5), values, max_size=4)
documents = st.dictionaries(
    st.sampled_from(_KEYS), st.one_of(values, tables), min_size=0, max_size=6
)


def to_toml(document: dict[str, Any]) -> str:
    """A TOML document; JSON's string and number syntax is valid TOML for these values."""
    lines, sections = [], []
    for key, value in document.items():
        if isinstance(value, dict):
            body = [f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()]
            sections.append("\n".join([f"[{key}]", *body]))
        else:
            lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines + sections) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return json.dumps(str(value))  # TOML integers are 64-bit
    return json.dumps(value, ensure_ascii=False)


@recorded(
    f"manifest parser: {EXAMPLES} random manifests",
    "every one either parsed into a safe name, route and limits, or was refused "
    "with a ManifestError naming edgefn.toml",
)
@fuzz
@given(documents)
@example({"name": "x", "route": "/x", "limits": {"memory": "64MiB"}})
def test_the_manifest_parser_accepts_only_safe_manifests(document: dict[str, Any]) -> None:
    try:
        manifest = parse_manifest(to_toml(document))
    except ManifestError as exc:
        assert str(exc).startswith("edgefn.toml: ")
        return
    assert _DNS_LABEL.fullmatch(manifest.name)
    segments = manifest.route.split("/")
    assert segments[0] == "" and all(s not in ("", ".", "..") for s in segments[1:])
    assert manifest.route not in ("/", "/healthz", "/readyz")
    manifest.resolve_limits()  # valid limits, or parsing would have refused them


@recorded(
    f"manifest parser: {EXAMPLES} random texts",
    "every one parsed or was refused with a ManifestError, never another exception",
)
@fuzz
@given(st.text(max_size=200))
def test_the_manifest_parser_never_fails_on_arbitrary_text(text: str) -> None:
    try:
        parse_manifest(text)
    except ManifestError:
        pass


ROUTES = ["/hello", "/hostile", "/a/b", "/a/b/c", "/img"]
paths = st.one_of(
    st.text(max_size=40).map(lambda s: "/" + s),
    st.lists(
        st.sampled_from(["a", "b", "c", "..", ".", "", "hello", "img", "%2F"]), max_size=6
    ).map(lambda parts: "/" + "/".join(parts)),
)


@recorded(
    f"gateway route table: {EXAMPLES} random paths",
    "routes match whole segments only; the longest owning route wins",
)
@fuzz
@given(paths)
def test_the_route_table_only_matches_whole_segments(path: str) -> None:
    table = FunctionTable.__new__(FunctionTable)  # matching needs nothing loaded
    table._routes = {route: route for route in ROUTES}  # type: ignore[misc]
    match = table.match(path)
    if match is None:
        assert not any(path == r or path.startswith(r + "/") for r in ROUTES)
        return
    route, relative = match
    assert path == route or path.startswith(route + "/")  # type: ignore[operator]
    # The longest owning route wins, and the function sees the rest of the path.
    assert not any(
        len(r) > len(route) and (path == r or path.startswith(r + "/"))  # type: ignore[arg-type]
        for r in ROUTES
    )
    assert relative.startswith("/") and route + relative.rstrip("/") in (  # type: ignore[operator]
        path.rstrip("/"),
        path,
    )


# Raw request targets built from the pieces that make paths ambiguous.
raw_paths = st.lists(
    st.lists(
        st.sampled_from(
            ["a", "b", "c", "hello", "img", "hell%6F", ".", "..", "%2e", "%2E", "%2f", "%2F"]
            + ["%5C", "\\", "%3F", "", "x"]
        ),
        max_size=3,
    ).map("".join),
    max_size=6,
).map(lambda parts: "/" + "/".join(parts))


def proxy_routes(path: str) -> str | None:
    """The route a proxy picks that decodes, reads backslashes as slashes, merges
    slashes and removes dot segments (the most normalising reading)."""
    decoded = re.sub(r"[/\\]+", "/", unquote(path))
    normal = posixpath.normpath(decoded).replace("//", "/")
    return next((r for r in sorted(ROUTES, key=len, reverse=True) if _under(normal, r)), None)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@recorded(
    f"raw-path routing: {EXAMPLES} random request targets",
    "a path served is routed to the same function by a raw-matching and by a fully "
    "normalising proxy, or refused with 400 `bad_path`",
)
@fuzz
@given(raw_paths)
@example("/hello/%2e%2e/img")
@example("/a/b//c")
@example("/a%2Fb/c")
def test_a_served_path_selects_the_same_function_for_every_proxy_reading(raw: str) -> None:
    table = FunctionTable.__new__(FunctionTable)
    table._routes = {r: r for r in ROUTES}  # type: ignore[misc]
    scope = {"type": "http", "path": unquote(raw), "raw_path": raw.encode(), "query_string": b""}
    try:
        found = route(scope, table.match, str)
    except GatewayError as refused:
        assert (refused.status, refused.code) == (400, "bad_path")
        return
    if found is None:
        return
    served = found[0]
    # A proxy matching raw bytes, and one normalising everything, pick the same route.
    assert _under(raw, served), (raw, served)
    assert proxy_routes(raw) == served, (raw, served)


app = App()


@app.get("/items/{item_id:int}")
def item(request: Request) -> dict[str, object]:
    return {"id": request.path_params["item_id"]}


@app.get("/files/{rest:path}")
def files(request: Request) -> str:
    return str(request.path_params["rest"])


@app.route("/things/{name}", methods=["POST", "GET"])
def things(request: Request) -> str:
    return str(request.path_params["name"])


@recorded(
    f"SDK router: {EXAMPLES} random paths and methods",
    "answers 200, 404 or 405 with Allow, never an exception",
)
@fuzz
@given(paths, st.sampled_from(["GET", "POST", "DELETE", "HEAD", "BREW"]))
@example("/things/x", "DELETE")
@example("/items/12", "GET")
def test_the_sdk_router_answers_every_path_with_200_404_or_405(path: str, method: str) -> None:
    response = TestClient(app).request(method, path)
    assert response.status in (200, 404, 405), (path, response.status, response.body)
    if response.status == 405:
        assert response.headers.get("allow")
