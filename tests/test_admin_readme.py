"""The README's admin API table lists every route of the admin API and every query
parameter each takes, checked against the gateway's own OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from gateway_process import ROOT, GatewayProcess

# Served outside the OpenAPI document (Starlette routes, or include_in_schema=False).
_UNLISTED = {("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/healthz"), ("GET", "/readyz")}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path_factory.mktemp("admin-readme") / "data")
    try:
        yield process.start()
    finally:
        process.stop()


def _readme_routes() -> dict[tuple[str, str], set[str]]:
    """Each (method, path) in the README's admin table, with the query parameters
    its row shows (`?a=..&b=..`)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| method and path | what |", 1)[1].split("\n\n", 1)[0]
    routes: dict[tuple[str, str], set[str]] = {}
    for row in table.splitlines()[2:]:
        first = row.split(" | ", 1)[0]
        for method, path, query in re.findall(
            r"`(GET|POST|PATCH|PUT|DELETE) ([^`?\s]+)\??([^`\s]*)", first
        ):
            routes[method, path] = set(re.findall(r"(\w+)=", query))
    return routes


def test_readme_admin_table_lists_every_route_and_parameter(gateway: GatewayProcess) -> None:
    document = gateway.admin("GET", "/openapi.json").json()
    served = {route: set() for route in _UNLISTED}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            served[method.upper(), path] = {
                p["name"] for p in operation.get("parameters", []) if p["in"] == "query"
            }
    assert _readme_routes() == served
