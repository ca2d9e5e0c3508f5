"""Loading components: AOT cache, contract checks, limits validation."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

import edgefn_runtime
from edgefn_platform import BuildResult
from edgefn_runtime import CONTRACT_VERSION, Engine, InvalidComponent, Limits, Request
from edgefn_runtime._aot import AotCache


def test_a_corrupt_artifact_is_recompiled_and_the_next_load_served_from_the_cache(
    tmp_path: Path, hostile_build: BuildResult
) -> None:
    # One test, as a compile takes ~10 s: a corrupt artifact is a miss, as a
    # missing one is (test_wait_guard's and a cold restart's in test_operations).
    wasm = hostile_build.path
    with Engine(cache_dir=tmp_path) as engine:
        artifact = engine.aot.path_for(hostile_build.sha256)
        artifact.parent.mkdir(parents=True)
        artifact.write_bytes(b"garbage")
        compiled = engine.load(wasm)
        assert (engine.aot.hits, engine.aot.misses) == (0, 1)
        assert compiled.invoke(Request("GET", "/counter")).response.status == 200
        started = time.perf_counter()
        sandbox = engine.load(wasm)
        assert time.perf_counter() - started < 1.0
        assert (engine.aot.hits, engine.aot.misses) == (1, 1)
        assert sandbox.invoke(Request("GET", "/counter")).response.status == 200


def test_the_first_of_two_compiles_of_an_artifact_stays(tmp_path: Path) -> None:
    # Workers starting at once, or gateways sharing a --cache-dir, may compile one
    # component together: a second write must not replace the file the first's
    # processes have mapped.
    cache = AotCache(tmp_path, "key")
    artifact = cache.path_for("0" * 64)
    cache._store(artifact, b"first")
    cache._store(artifact, b"second")
    assert artifact.read_bytes() == b"first"
    assert list(tmp_path.iterdir()) == [artifact]  # no temporary file left behind


def test_random_bytes_are_not_a_component(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "junk.wasm"
    path.write_bytes(b"\x00asm but not really")
    with pytest.raises(InvalidComponent, match="not a valid WebAssembly component"):
        engine.load(path)


def test_core_module_is_not_a_component(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "core.wasm"
    path.write_bytes(wasmtime.wat2wasm("(module)"))
    with pytest.raises(InvalidComponent):
        engine.load(path)


def test_component_without_the_handler_export_is_refused(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "empty.wasm"
    path.write_bytes(wasmtime.wat2wasm("(component)"))
    with pytest.raises(
        InvalidComponent, match=f"does not export edgefn:http/incoming-handler@{CONTRACT_VERSION}"
    ):
        engine.load(path)


def test_missing_assets_directory_is_refused(
    tmp_path: Path, engine: Engine, hostile_build: BuildResult
) -> None:
    with pytest.raises(FileNotFoundError, match="assets directory"):
        engine.load(hostile_build.path, assets=tmp_path / "nope")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("memory", 1024, "minimum of 16 MiB"),
        ("fuel", -1, "non-negative"),
        ("timeout", 0, "positive"),
    ],
)
def test_limits_reject_nonsense(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**{field: value})  # type: ignore[arg-type]


def test_other_contract_version_is_named(tmp_path: Path, engine: Engine) -> None:
    path = tmp_path / "future.wasm"
    path.write_bytes(
        wasmtime.wat2wasm(
            '(component (instance $i) (export "edgefn:http/incoming-handler@0.1.0" (instance $i)))'
        )
    )
    with pytest.raises(InvalidComponent, match="implements edgefn contract 0.1.0"):
        engine.load(path)


def test_a_handle_function_of_another_type_is_refused(tmp_path: Path, engine: Engine) -> None:
    # Right names, wrong signature: lifting its results by the contract's layout
    # would read garbage, so the load must refuse it.
    path = tmp_path / "impostor.wasm"
    path.write_bytes(
        wasmtime.wat2wasm(
            f"""
            (component
              (core module $m (func (export "h") (param i32) (result i32) i32.const 0))
              (core instance $i (instantiate $m))
              (func $h (param "x" u32) (result u32) (canon lift (core func $i "h")))
              (instance $handler (export "handle" (func $h)))
              (export "edgefn:http/incoming-handler@{CONTRACT_VERSION}" (instance $handler)))
            """
        )
    )
    with pytest.raises(InvalidComponent, match=r"handle function has type func\(u32\) -> u32"):
        engine.load(path)


def test_back_to_back_fresh_requests_never_run_out_of_pool_slots(
    hostile_build: BuildResult,
) -> None:
    # Stores are freed on a reaper thread; when it falls behind, requests must
    # free their own rather than pile up until the pool of 16 slots is gone.
    with Engine(max_instances=16) as small:
        sandbox = small.load(hostile_build.path)
        statuses = {sandbox.invoke(Request("GET", "/counter")).response.status for _ in range(300)}
    assert statuses == {200}


def test_a_wasmtime_other_than_the_pinned_one_is_refused_on_import() -> None:
    # The adapter (`_wasmtime.py`) uses wasmtime-py internals that change between
    # releases: another version must fail at import, saying which and what to do.
    script = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda name: '49.0.0' if name == 'wasmtime' else real(name)\n"
        "import edgefn_runtime\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: edgefn_runtime needs wasmtime 50.0.1")
    assert "wasmtime 49.0.0 is installed" in last
    assert "pip install wasmtime==50.0.1" in last


def test_only_the_adapter_touches_wasmtime_internals() -> None:
    runtime = Path(edgefn_runtime.__file__).parent
    private = re.compile(r"wasmtime\._|from wasmtime(\.\w+)* import _|\._func\b|\._context\(\)")
    touching = sorted(
        str(path.relative_to(runtime))
        for path in runtime.rglob("*.py")
        if private.search(path.read_text(encoding="utf-8"))
    )
    assert touching == ["_wasmtime.py"]
