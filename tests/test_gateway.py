"""End to end: a real `edgefn serve` with two workers, driven by the CLI and httpx."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import wasmtime

import attacks
from edgefn_platform import build
from gateway_process import ROOT, GatewayProcess, cli, ended, start_dev
from waiting import wait_until

FUNCTIONS = Path(__file__).resolve().parent / "functions"
HELLO = ROOT / "functions" / "hello"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("gateway") / "data"
    with GatewayProcess(data_dir, workers=2, extra_env={"EDGEFN_MAX_UPLOAD": "25MiB"}) as process:
        yield process


@pytest.fixture(scope="module")
def deployed(gateway: GatewayProcess) -> GatewayProcess:
    for directory in (HELLO, FUNCTIONS / "hostile"):
        result = cli(gateway, "deploy", str(directory))
        assert result.exit_code == 0, result.output
        assert f"{gateway.public_url}/" in result.output and "version" in result.output
    for name in ("hello", "hostile"):
        gateway.wait_serving(name)  # the other worker notices within a second
    return gateway


def test_deployed_function_answers_with_a_request_id(deployed: GatewayProcess) -> None:
    response = deployed.get("/hello/hello/world?greeting=Hey", headers={"x-request-id": "abc-1"})
    assert response.status_code == 200
    assert response.text == "Hey, world!\n"
    assert response.headers["x-request-id"] == "abc-1"
    assert deployed.get("/hello/").headers["x-request-id"]


def test_function_sees_its_relative_path_and_route(deployed: GatewayProcess) -> None:
    seen = deployed.get("/hostile/inspect?a=1").json()
    assert seen["path"] == "/inspect"
    assert ["x-edgefn-route", "/hostile"] in seen["headers"]


def test_deployed_assets_are_mounted_read_only(deployed: GatewayProcess) -> None:
    read = deployed.get("/hostile/read?path=/assets/greeting.txt").json()
    assert read == {"read": "hello from an asset\n"}
    written = deployed.get("/hostile/write?path=/assets/greeting.txt").json()
    assert "written" not in written


def test_unknown_route_is_404_no_route(deployed: GatewayProcess) -> None:
    response = deployed.get("/nobody/home")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "no_route" and error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/hostile/raise", 500, "function_error"),
        ("/hostile/crash", 502, "function_crashed"),
        ("/hostile/sleep?seconds=5", 504, "timeout"),
        ("/hostile/loop", 503, "fuel_exhausted"),
        ("/hostile/alloc", 503, "memory_limit"),
        ("/hostile/big?size=20000000&whole=1", 502, "response_too_large"),
    ],
)
def test_each_runtime_error_has_its_status_and_code(
    deployed: GatewayProcess, path: str, status: int, code: str
) -> None:
    response = deployed.get(path)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if code == "function_error":
        assert "KeyError" in response.json()["error"]["message"]
    assert deployed.get("/hello/").status_code == 200


def test_body_over_the_limit_is_413(deployed: GatewayProcess) -> None:
    response = httpx.post(deployed.public_url + "/hostile/echo", content=b"x" * (11 * 2**20))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_function_deployed_after_start_is_served_by_both_workers(
    deployed: GatewayProcess,
) -> None:
    sent = []
    for _ in range(60):  # a new connection each time, so the kernel spreads them
        response = deployed.get("/hello/", headers={"connection": "close"})
        assert response.status_code == 200
        sent.append(response.headers["x-request-id"])
    deployed.wait_logged("hello", sent)  # access lines are flushed in batches
    lines = deployed.admin("GET", "/v1/functions/hello/logs?limit=1000").json()
    workers = {json.loads(r["line"])["worker"] for r in lines if r["kind"] == "access"}
    assert len(workers) == 2


def test_admin_api_requires_the_token(deployed: GatewayProcess) -> None:
    missing = httpx.get(deployed.admin_url + "/v1/functions")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = httpx.get(
        deployed.admin_url + "/v1/functions", headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert deployed.admin("GET", "/v1/functions").status_code == 200


def upload(gateway: GatewayProcess, manifest: str, component: bytes) -> httpx.Response:
    return gateway.admin(
        "POST",
        "/v1/functions",
        data={"manifest": manifest},
        files={"component": ("c.wasm", bytes(component))},
    )


OTHER_WORLD = """(component
  (core module $m (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $inst (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $inst)))"""
UPLOAD_AREA = "Uploads to the admin API (tests/test_gateway.py)"


def hello_wasm() -> bytes:
    return build(HELLO).path.read_bytes()  # built once (by `make test`, or here)


def uncompiled(component: bytes) -> bytes:
    """`component` with a custom section of random bytes appended: the same code,
    but a component no AOT cache holds yet, as a new build's would be, without the
    build (~12 s)."""
    name = b"edgefn-test"
    section = bytes([len(name)]) + name + os.urandom(16)
    return component + bytes([0, len(section)]) + section  # both lengths < 128: one-byte LEB128


@pytest.mark.parametrize(
    ("attack", "manifest", "component", "status", "message"),
    [
        ("empty component", 'name = "bad"', lambda: b"", 400, "empty"),
        ("random bytes", 'name = "bad"', lambda: os.urandom(4096), 400,
         "not a valid WebAssembly component"),
        ("a core wasm module", 'name = "bad"', lambda: wasmtime.wat2wasm("(module)"), 400,
         "component"),
        ("a truncated component", 'name = "bad"', lambda: hello_wasm()[:100_000], 400,
         "not a valid WebAssembly component"),
        ("a component of another world (wasi:cli/run)", 'name = "bad"',
         lambda: wasmtime.wat2wasm(OTHER_WORLD), 400, "does not export"),
        ("a component exporting nothing", 'name = "bad"',
         lambda: wasmtime.wat2wasm("(component)"), 400, "does not export"),
        ("manifest that is not TOML", "name = ", lambda: b"\0asm", 400, "not valid TOML"),
        ("manifest with a wrong type", 'name = "bad"\n[limits]\nmemory = true',
         hello_wasm, 400, "limits.memory"),
        ("manifest with an unknown key", 'name = "bad"\nsudo = true', hello_wasm, 400,
         "sudo: unknown field"),
        ("name with ../", 'name = "../bad"', hello_wasm, 400, "name:"),
        ("name with a Cyrillic look-alike letter", 'name = "b\u0430d"', hello_wasm, 400,
         "name:"),
        ("name with a zero-width space", 'name = "bad\u200b"', hello_wasm, 400, "name:"),
        ("name with spaces and capitals", 'name = "Bad Name"', hello_wasm, 400, "name:"),
        ("route /", 'name = "bad"\nroute = "/"', hello_wasm, 400, "reserved"),
        ("route /healthz", 'name = "bad"\nroute = "/healthz"', hello_wasm, 400, "reserved"),
        ("route //x", 'name = "bad"\nroute = "//x"', hello_wasm, 400, "route:"),
        ("route /x/../y", 'name = "bad"\nroute = "/x/../y"', hello_wasm, 400, "route:"),
        ("an upload over --max-upload (26 MiB of 25)", 'name = "bad"',
         lambda: b"\0" * (26 * 2**20), 413, "exceeds the limit"),
    ],
)  # fmt: skip
def test_bad_uploads_are_refused_and_nothing_is_stored(
    deployed: GatewayProcess,
    attack: str,
    manifest: str,
    component: Callable[[], bytes],
    status: int,
    message: str,
) -> None:
    response = upload(deployed, manifest, component())
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert deployed.admin("GET", "/v1/functions/bad").status_code == 404
    assert not list((deployed.data_dir / "tmp").iterdir())
    code = response.json()["error"]["code"]
    attacks.record(UPLOAD_AREA, attack, f"{status} `{code}`; nothing stored")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_200_megabyte_upload_is_refused_without_being_read_whole(
    deployed: GatewayProcess, chunked: bool
) -> None:
    total, sent, answer = 200 * 2**20, 0, b""
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % total
    head = (
        b"POST /v1/functions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n%s\r\n"
        b"content-type: multipart/form-data; boundary=b\r\n\r\n"
    )
    part = b'--b\r\ncontent-disposition: form-data; name="component"; filename="c.wasm"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", deployed.admin_port)) as sock:
        sock.sendall(head % (deployed.token.encode(), framing))
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        chunk = b"\0" * 2**20
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sock.settimeout(10)
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 2**20
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us, as it should be
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while data := sock.recv(65536):
                answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"upload_too_large" in answer
    # What was sent sits in socket buffers at most; the server stopped reading.
    assert sent < 64 * 2**20, f"{sent // 2**20} MB were sent before the server refused"
    how = "chunked" if chunked else "with its Content-Length"
    attacks.record(
        UPLOAD_AREA,
        f"a 200 MB upload, {how}",
        f"413 `upload_too_large` after {sent // 2**20} MB had been sent; nothing stored",
    )


def test_broken_assets_archive_is_refused(deployed: GatewayProcess) -> None:
    component = (HELLO / ".edgefn" / "hello.wasm").read_bytes()
    response = deployed.admin(
        "POST",
        "/v1/functions",
        data={"manifest": 'name = "bad"\nroute = "/bad"'},
        files={"component": ("c.wasm", component), "assets": ("a.tar.gz", b"not a tarball")},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_assets"
    assert deployed.admin("GET", "/v1/functions/bad").status_code == 404


def test_route_conflict_is_409_naming_the_owner(deployed: GatewayProcess) -> None:
    component = (HELLO / ".edgefn" / "hello.wasm").read_bytes()
    response = upload(deployed, 'name = "squatter"\nroute = "/hello"', component)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "route_conflict" and "'hello'" in error["message"]


def test_a_function_may_opt_in_to_reused_instances(deployed: GatewayProcess) -> None:
    component = (FUNCTIONS / "hostile" / ".edgefn" / "hostile.wasm").read_bytes()
    response = upload(deployed, 'name = "reused"\nreuse = 3', component)
    assert response.status_code == 201, response.text
    deployed.wait_serving("reused")
    counts = [deployed.get("/reused/counter").json()["counter"] for _ in range(12)]
    # Each worker's instance serves three requests, then a fresh one takes over.
    assert max(counts) == 3 and min(counts) == 1, counts
    assert deployed.get("/hostile/counter").json()["counter"] == 1
    # Every request executes; only a request that met a fresh instance instantiated
    # (at most 4 of the 12; fewer where an instance was instantiated ahead of it).
    assert deployed.metric("edgefn_execute_seconds_count", function="reused") == 12
    assert 1 <= deployed.metric("edgefn_instantiate_seconds_count", function="reused") <= 4


def write_function(directory: Path, name: str, answer: str) -> Path:
    directory.mkdir(exist_ok=True)
    (directory / "edgefn.toml").write_text(f'name = "{name}"\n')
    (directory / "app.py").write_text(
        "from edgefn import App\napp = App()\n\n"
        f"@app.get('/')\ndef index(request):\n    return {answer!r}\n"
    )
    return directory


def test_redeploy_under_load_rollback_and_delete(deployed: GatewayProcess) -> None:
    # Version 1: the hostile fixture's component, compiled already, its /env route
    # answering its [env]. Version 2: the same code with a custom section of its
    # own (a component no cache holds) and another [env]: its deploy, the compile
    # in it, runs under the load. (A new build first took 12 s more.)
    hostile = build(FUNCTIONS / "hostile").path.read_bytes()
    assert upload(deployed, 'name = "flip"\n[env]\nVERSION = "1"', hostile).status_code == 201
    deployed.wait_serving("flip", 1)
    v1, v2 = '{"VERSION":"1"}', '{"VERSION":"2"}'
    assert deployed.get("/flip/env").text == v1

    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=deployed.public_url, timeout=30) as client:
            while not stop.is_set():
                response = client.get("/flip/env")
                (answers if response.status_code == 200 else failures).append(response.text)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        second = upload(deployed, 'name = "flip"\n[env]\nVERSION = "2"', uncompiled(hostile))
        assert second.status_code == 201, second.text
        deployed.wait_serving("flip", 2)  # every worker notices within a second
        # The hammer's connection answered v2 once a request that started after the
        # switch (the second from now: the first may have been in flight) returns.
        switched = len(answers) + len(failures)
        wait_until(
            lambda: len(answers) + len(failures) >= switched + 2,
            message="the hammer to send two requests after the switch",
        )
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert answers[0] == v1 and answers[-1] == v2
    assert set(answers) == {v1, v2}

    rolled = cli(deployed, "rollback", "flip")
    assert rolled.exit_code == 0 and "version 1" in rolled.output
    deployed.wait_serving("flip", 1)
    assert deployed.get("/flip/env").text == v1
    versions = cli(deployed, "versions", "flip")
    assert "* " in versions.output.splitlines()[1]

    assert cli(deployed, "rm", "flip").exit_code == 0
    deployed.wait_serving("flip", 0)
    assert deployed.get("/flip/").json()["error"]["code"] == "no_route"


def test_cli_errors_are_one_line(deployed: GatewayProcess) -> None:
    result = cli(deployed, "info", "ghost")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no function named 'ghost' is deployed (function_not_found, HTTP 404)"
    )


def test_sigkill_during_deploy_leaves_the_previous_version(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path / "data") as gateway:
        # Version 1: hello's component, compiled already (the test is about version 2).
        assert upload(gateway, 'name = "crashy"', hello_wasm()).status_code == 201
        # A component no gateway has compiled: the deploy spends seconds compiling it.
        second = uncompiled(hello_wasm())
        thread = threading.Thread(
            target=lambda: _ignore_errors(lambda: upload(gateway, 'name = "crashy"', second))
        )
        thread.start()
        scratch = tmp_path / "data" / "tmp"
        size = len(second)

        def compiling() -> bool:
            # Uploaded whole into the deploy's scratch folder: compiling it now.
            for upload in scratch.glob("*/component.wasm") if scratch.is_dir() else []:
                with contextlib.suppress(FileNotFoundError):  # a deploy just ended
                    if upload.stat().st_size == size:
                        return True
            return False

        try:
            wait_until(compiling, timeout=30, interval=0.01, message="the upload to be compiling")
            gateway.kill()
        finally:
            thread.join()

    with GatewayProcess(tmp_path / "data") as restarted:
        versions = restarted.admin("GET", "/v1/functions/crashy/versions").json()
        assert [v["version"] for v in versions] == [1]
        assert restarted.get("/crashy/").text == '{"message":"Hello from hello!"}'


def _ignore_errors(call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except httpx.HTTPError:
        pass


def test_dev_serves_and_redeploys_on_change(tmp_path: Path) -> None:
    directory = write_function(tmp_path / "devfn", "devfn", "before")
    process, port = start_dev(directory, tmp_path / "dev.log")
    with ended(process):
        assert _wait_for(f"http://127.0.0.1:{port}/devfn/", "before")
        write_function(directory, "devfn", "after")
        assert _wait_for(f"http://127.0.0.1:{port}/devfn/", "after")
    assert f"http://127.0.0.1:{port}/devfn" in (tmp_path / "dev.log").read_text()


def _wait_for(url: str, text: str, timeout: float = 60) -> bool:
    def answers() -> bool:
        try:
            return httpx.get(url).text == text
        except httpx.HTTPError:
            return False

    return wait_until(answers, timeout=timeout, interval=0.1, message=f"{url} to answer {text!r}")


def test_redeploying_the_active_version_adds_no_version(deployed: GatewayProcess) -> None:
    before = deployed.admin("GET", "/v1/functions/hello").json()["versions"]
    result = cli(deployed, "deploy", str(HELLO))
    assert result.exit_code == 0, result.output
    assert deployed.admin("GET", "/v1/functions/hello").json()["versions"] == before
