"""Streamed request bodies in the sandbox (`edgefn:http/request-stream`): what a
function reads of the `RequestSource` the gateway gives, and every limit on it.
The gateway's side, a real client's upload, is in test_upload_stream.py."""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from conftest import FUNCTIONS

from edgefn_platform import BuildResult
from edgefn_runtime import (
    BodyTooLarge,
    ClientClosed,
    Engine,
    FuelExhausted,
    GuestCrashed,
    GuestError,
    InvalidComponent,
    Limits,
    Request,
    Sandbox,
    Timeout,
)
from edgefn_runtime.capabilities import Capability, RequestStreamCapability, installed
from edgefn_runtime.capabilities.request_stream import REQUEST_STREAM_IMPORT

pytestmark = pytest.mark.wasm

GRANT = {"request_stream": True}


@dataclass
class Source:
    """Gives `chunks` one `read` at a time (an exception class is raised instead)."""

    chunks: list[bytes | type[Exception]]
    reads: list[int] = field(default_factory=list)

    def read(self, size: int, timeout: float) -> bytes:
        assert 0 < timeout <= Limits().timeout
        self.reads.append(size)
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if not isinstance(chunk, bytes):
            raise chunk
        return chunk


@pytest.fixture(scope="module")
def streaming(engine: Engine, hostile_build: BuildResult) -> Iterator[Sandbox]:
    """The hostile fixture granted streamed request bodies."""
    assets = FUNCTIONS / "hostile" / "assets"
    yield engine.load(hostile_build.path, assets=assets, grants=GRANT)


def upload(sandbox: Sandbox, query: str, source: Source, **limits: Any) -> dict[str, Any]:
    outcome = sandbox.invoke(
        Request("POST", "/upload", query), replace(Limits(), **limits), source=source
    )
    assert outcome.response.status == 200, outcome.response.body
    return json.loads(outcome.response.body)


@pytest.mark.parametrize("whole", ["", "whole=1"], ids=["stream()", "body"])
def test_the_function_reads_the_body_chunk_by_chunk_as_the_source_gives_it(
    streaming: Sandbox, whole: str
) -> None:
    chunks = [b"a" * 1000, b"b" * 70_000, b"c"]
    source = Source(list(chunks))
    answer = upload(streaming, whole, source)
    body = b"".join(chunks)
    assert answer["size"] == len(body)
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert answer["chunks"] == (1 if whole else 3)
    assert source.reads == [1 << 20] * 4  # the last one found the end


def test_a_function_that_stops_early_reads_no_further(streaming: Sandbox) -> None:
    source = Source([b"1", b"2", b"3"])
    assert upload(streaming, "stop=1", source)["size"] == 1
    assert len(source.reads) == 1 and source.chunks == [b"2", b"3"]


def test_streaming_the_body_then_reading_it_whole_is_the_function_s_error(
    streaming: Sandbox,
) -> None:
    with pytest.raises(GuestError, match="already streamed"):
        upload(streaming, "twice=1", Source([b"x"]))


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (TimeoutError, Timeout, "did not send the request body within"),
        (ConnectionResetError, ClientClosed, "closed the connection mid-body"),
        (RuntimeError, GuestCrashed, "the host failed to read the request body: RuntimeError"),
    ],
)
def test_a_source_that_fails_stops_the_function_with_its_error(
    streaming: Sandbox, failure: type[Exception], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        upload(streaming, "", Source([b"x", failure, b"never read"]))


def test_a_body_past_max_body_is_stopped_where_it_crosses_the_limit(streaming: Sandbox) -> None:
    source = Source([b"x" * 600, b"y" * 600, b"z"])
    with pytest.raises(BodyTooLarge, match="limit of 1000 bytes") as raised:
        upload(streaming, "", source, max_body=1000)
    assert raised.value.status == 413 and source.chunks == [b"z"]


def test_each_read_is_charged_fuel_for_the_host_s_work_and_its_bytes(
    streaming: Sandbox,
) -> None:
    def fuel(chunks: list[bytes]) -> int:
        outcome = streaming.invoke(Request("POST", "/upload"), source=Source(list(chunks)))
        return outcome.usage.fuel

    one, many = fuel([b"x" * 1000]), fuel([b"x"] * 1000)
    # 999 more reads at 20,000 each, beside the guest's own work for each chunk.
    assert many - one > 999 * 20_000
    with pytest.raises(FuelExhausted, match="reading its request body"):
        upload(streaming, "", Source([b"x" * 1_000_000]), fuel=one + 70_000)


def test_a_read_that_finds_the_end_pays_as_one_that_finds_bytes(streaming: Sandbox) -> None:
    """A guest calling on after the body's end would otherwise keep the host busy
    for free."""
    whole = streaming.invoke(Request("POST", "/upload")).usage.fuel  # no read at all
    ended = streaming.invoke(Request("POST", "/upload"), source=Source([])).usage.fuel
    assert ended - whole >= 20_000


def test_without_a_source_the_body_comes_whole_as_always(streaming: Sandbox) -> None:
    outcome = streaming.invoke(Request("POST", "/upload", body=b"abc"))
    assert json.loads(outcome.response.body)["size"] == 3


def test_a_reused_instance_streams_each_of_its_requests(
    engine: Engine, hostile_build: BuildResult
) -> None:
    sandbox = engine.load(hostile_build.path, reuse=5, grants=GRANT)
    for n in range(1, 4):
        assert upload(sandbox, "", Source([b"x" * n, b"y"]))["size"] == n + 1
    assert json.loads(sandbox.invoke(Request("POST", "/upload", body=b"ab")).response.body) == {
        "size": 2,
        "chunks": 1,
        "sha256": hashlib.sha256(b"ab").hexdigest(),
    }


def test_an_idle_instance_keeps_nothing_of_its_last_request_s_source(
    engine: Engine, hostile_build: BuildResult
) -> None:
    sandbox = engine.load(hostile_build.path, reuse=5, grants=GRANT)
    source = Source([b"x"])
    gone = weakref.ref(source)
    upload(sandbox, "", source)
    del source
    assert sandbox.idle == 1 and gone() is None


def test_a_component_built_without_it_is_refused_the_grant(hostile_build: BuildResult) -> None:
    """Built before streamed bodies, a guest would take the streamed length for a
    real one: the grant is refused on load, through `Capability.refusal`."""
    capability = RequestStreamCapability()
    assert capability.refusal(True, frozenset(capability.imports)) is None
    assert "rebuild it" in str(capability.refusal(True, frozenset()))

    class Refusing(Capability):
        name = "refusing"

        def refusal(self, grant: Any, imports: frozenset[str]) -> str | None:
            assert REQUEST_STREAM_IMPORT in imports
            return f"refused {grant}"

    with Engine(capabilities=[*installed(), Refusing()]) as engine:
        engine.load(hostile_build.path)  # not granted: nothing to refuse
        with pytest.raises(InvalidComponent, match="refused 7"):
            engine.load(hostile_build.path, grants={"refusing": 7})
