"""Host capabilities are plug-ins: a new one is one module (tests/capabilities/echo.py),
linked with `Engine(capabilities=...)`, and the core needs no change.

The guest is built here with componentize-py from edgefn's contract WIT plus the
echo interface (tests/capabilities/echo_guest), and cached by the hash of its inputs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import pytest
from capabilities.echo import ECHO_FUEL, EchoCapability

from edgefn_runtime import Engine, FuelExhausted, InvalidComponent, Limits, Request, Sandbox
from edgefn_runtime.capabilities import installed

pytestmark = pytest.mark.wasm

GUEST = Path(__file__).parent / "capabilities" / "echo_guest"
CACHE = Path(os.environ["EDGEFN_CACHE_DIR"]) / "test-capabilities"


def _contract_wit() -> Path:
    # Where `edgefn build` reads the contract from (platform/edgefn_platform/builder.py).
    return Path(str(resources.files("edgefn_contract.wit")))


def _build_echo_guest(tmp: Path) -> Path:
    sources = sorted(_contract_wit().glob("*.wit")) + [GUEST / "echo.wit", GUEST / "app.py"]
    digest = hashlib.sha256(version("componentize-py").encode())
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    output = CACHE / f"echo-{digest.hexdigest()[:16]}.wasm"
    if output.exists():
        return output
    wit = tmp / "wit"
    wit.mkdir()
    for source in sources[:-1]:
        shutil.copy(source, wit / source.name)
    componentize = Path(sys.executable).with_name("componentize-py")
    partial = tmp / "echo.wasm"
    subprocess.run(
        [str(componentize), "-d", str(wit), "-w", "echo-handler", "componentize", "app",
         "-p", str(GUEST), "-o", str(partial)],
        # An empty VIRTUAL_ENV: none of the host's packages go into the guest.
        env={**os.environ, "VIRTUAL_ENV": str(tmp)},
        check=True,
        capture_output=True,
    )  # fmt: skip
    CACHE.mkdir(parents=True, exist_ok=True)
    os.replace(partial, output)
    return output


@pytest.fixture(scope="module")
def echo_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_echo_guest(tmp_path_factory.mktemp("echo-guest"))


@pytest.fixture(scope="module")
def echo_engine() -> Iterator[tuple[Engine, EchoCapability]]:
    capability = EchoCapability()
    with Engine(capabilities=[*installed(), capability]) as engine:
        yield engine, capability


@pytest.fixture(scope="module")
def echo(echo_engine: tuple[Engine, EchoCapability], echo_wasm: Path) -> Sandbox:
    return echo_engine[0].load(echo_wasm)


def test_a_new_capability_is_linked_and_called_by_the_guest(
    echo: Sandbox, echo_engine: tuple[Engine, EchoCapability]
) -> None:
    capability = echo_engine[1]
    first = echo.invoke(Request("GET", "/", "hello"))
    second = echo.invoke(Request("GET", "/", "again"))
    # Per-request state: each request starts counting afresh.
    assert first.response.body == b"echo #1: hello\necho #2: hello"
    assert second.response.body == b"echo #1: again\necho #2: again"
    # `finish` saw each request's state and usage, with the host's fuel charged.
    assert capability.finished[-2:] == [(2, first.usage.fuel), (2, second.usage.fuel)]
    assert first.usage.fuel > 2 * ECHO_FUEL


def test_a_capability_state_is_per_request_on_a_reused_instance(
    echo_engine: tuple[Engine, EchoCapability], echo_wasm: Path
) -> None:
    reused = echo_engine[0].load(echo_wasm, reuse=3)
    bodies = [reused.invoke(Request("GET", "/", str(i))).response.body for i in range(3)]
    assert bodies == [f"echo #1: {i}\necho #2: {i}".encode() for i in range(3)]


def test_a_capability_renders_the_response_body_on_the_host(echo: Sandbox) -> None:
    outcome = echo.invoke(Request("GET", "/render", "hi"))
    assert outcome.response.body == b"rendered on the host: hi"
    assert outcome.response.headers == [("content-type", "text/plain")]


def test_a_breach_a_capability_records_ends_the_request(echo: Sandbox) -> None:
    with pytest.raises(FuelExhausted, match="the echo capability stopped the function"):
        echo.invoke(Request("GET", "/stop"), Limits(timeout=5.0))


def test_an_engine_without_the_capability_refuses_the_component(echo_wasm: Path) -> None:
    with (
        Engine() as engine,
        pytest.raises(InvalidComponent, match=r"imports edgefn:http/echo@.*does not provide"),
    ):
        engine.load(echo_wasm)


def test_capability_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Engine(capabilities=[EchoCapability(), EchoCapability()])
