"""`edgefn_requests_total` counts every request, also those no function was found
for; and the README's metrics table names every family /metrics exposes, with its
type and labels, so it cannot drift from `gateway/_metrics.py`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_process import ROOT, GatewayProcess, cli

HELLO = ROOT / "functions" / "hello"
COUNTER = ROOT / "tests" / "functions" / "counter"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("metrics") / "data"
    process = GatewayProcess(data_dir)
    process.start()
    try:
        assert cli(process, "deploy", str(HELLO)).exit_code == 0
        # So that every family has a sample on /metrics (counters start from zero
        # at each start): a function loaded from the AOT cache after a restart, a
        # deploy, an activation and a request.
        process.stop()
        process.start()
        assert cli(process, "deploy", str(HELLO)).exit_code == 0
        assert process.admin("POST", "/v1/functions/hello/activate", json={"version": 1}).is_success
        assert process.get("/hello/hello/x").status_code == 200
        # And a key-value operation, which stores bytes.
        assert cli(process, "deploy", str(COUNTER)).exit_code == 0
        assert process.get("/counter/incr").status_code == 200
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("method", "path", "status", "outcome"),
    [
        ("GET", "/nothing/here", "404", "no_route"),
        ("TRACE", "/hello/", "405", "method_not_allowed"),
        ("GET", "/hello/%2e%2e/x", "400", "bad_path"),
    ],
)
def test_requests_no_function_answers_are_counted(
    gateway: GatewayProcess, method: str, path: str, status: str, outcome: str
) -> None:
    labels = {"function": "", "status": status, "outcome": outcome}
    before = gateway.metric("edgefn_requests_total", **labels)
    response = httpx.request(method, gateway.public_url + path, timeout=10)
    assert response.status_code == int(status)
    assert response.json()["error"]["code"] == outcome
    # Counted before the response is sent, so it is on /metrics when it arrives.
    assert gateway.metric("edgefn_requests_total", **labels) == before + 1


def test_requests_while_starting_are_counted(tmp_path: Path) -> None:
    # Only an embedded app answers `starting` (a worker opens its port once loaded),
    # and one process holds one metrics directory: so in a process of its own.
    script = textwrap.dedent(
        """
        import asyncio, sys, threading
        from pathlib import Path
        import httpx
        from edgefn_platform.gateway._metrics import Metrics
        from edgefn_platform.gateway.policy import Policy
        from edgefn_platform.gateway.public import PublicApp

        class Loading:
            ready = threading.Event()

        class NoLogs:
            def add(self, *args): pass

        metrics = Metrics(Path(sys.argv[1]))
        app = PublicApp(Loading(), NoLogs(), Policy(), None, metrics)

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.get("/f/x")
            assert response.status_code == 503, response.text
            print(metrics.render().decode())

        asyncio.run(main())
        """
    )
    rendered = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert 'edgefn_requests_total{function="",outcome="starting",status="503"} 1.0' in rendered


def _readme_metrics() -> dict[str, tuple[str, set[str]]]:
    """The README's metrics table: each metric's name (as sampled), type and labels."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Metrics, timings, logs", 1)[1].split("\n### ", 1)[0]
    table: dict[str, tuple[str, set[str]]] = {}
    for row in re.finditer(r"^\s*\| `(edgefn_\w+)` \| (\w+) \|([^|]*)\|", section, re.MULTILINE):
        table[row[1]] = (row[2], set(re.findall(r"`(\w+)`", row[3])))
    return table


def _exposed(text: str) -> dict[str, tuple[str, set[str]]]:
    """Each family on /metrics: its sampled name, type and labels."""
    families: dict[str, tuple[str, set[str]]] = {}
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE):
        sampled = name if kind != "counter" or name.endswith("_total") else name + "_total"
        labels: set[str] = set()
        for sample in re.finditer(rf"^{re.escape(sampled)}\{{([^}}]*)\}}", text, re.MULTILINE):
            labels |= set(re.findall(r'(\w+)="', sample[1]))
        if not labels:  # a histogram's labels are on its _bucket samples
            for sample in re.finditer(rf"^{sampled}_bucket\{{([^}}]*)\}}", text, re.MULTILINE):
                labels |= set(re.findall(r'(\w+)="', sample[1])) - {"le"}
        families[sampled] = (kind, labels)
    return families


def test_readme_metrics_table_matches_metrics_endpoint(gateway: GatewayProcess) -> None:
    documented = _readme_metrics()
    assert documented, "no metrics table in the README's 'Metrics, timings, logs'"
    exposed = _exposed(gateway.admin("GET", "/metrics").text)
    assert documented == exposed, json.dumps(
        {"README only": sorted(documented.keys() - exposed.keys()),
         "/metrics only": sorted(exposed.keys() - documented.keys()),
         "differ": {k: [str(documented[k]), str(exposed[k])]
                    for k in documented.keys() & exposed.keys() if documented[k] != exposed[k]}},
        indent=1,
    )  # fmt: skip
