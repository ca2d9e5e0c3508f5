"""`edgefn dev`: functions served from their source by the dev runner; an edit is
live after the reload line, errors show where the developer looks, the local
capabilities work, and the dev runner is never what a gateway deploys."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from origin_server import OriginServer

from edgefn_platform.builder import BuildResult, build_dev_runner
from edgefn_platform.cli import main
from edgefn_platform.dev import DevError, LogTail, parse_secret
from edgefn_platform.dev._local import read_secrets
from edgefn_platform.dev._snapshots import MAX_FILE, Snapshots
from edgefn_platform.gateway import Deployer
from edgefn_platform.manifest import load_manifest
from edgefn_platform.registry import SQLiteRegistry
from edgefn_runtime import Engine, GuestError, InvalidComponent, Request, Sandbox
from edgefn_runtime.capabilities import DevSource, installed
from gateway_process import ROOT, children, ended, start_dev, tail
from waiting import wait_until

CACHE_DIR = ROOT / ".cache" / "edgefn"
HOSTILE = ROOT / "tests" / "functions" / "hostile"


@pytest.fixture(scope="module")
def dev_engine() -> Iterator[Engine]:
    with Engine(cache_dir=CACHE_DIR, capabilities=installed(dev=True)) as engine:
        yield engine


def write(directory: Path, app: str, manifest: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "edgefn.toml").write_text(f'name = "{directory.name}"\n{manifest}')
    (directory / "app.py").write_text("from edgefn import App\napp = App()\n" + app)
    return directory


def answer(text: str) -> str:
    return f"@app.get('/')\ndef index(request):\n    return {text!r}\n"


def serving_lines(log: Path, name: str) -> int:
    return len(re.findall(rf"^Serving {name} \(version \d+\)", log.read_text(), re.M))


def wait_for_line(log: Path, pattern: str, count: int = 1) -> None:
    wait_until(
        lambda: len(re.findall(pattern, log.read_text(), re.M)) >= count,
        timeout=120,
        interval=0.05,
        message=lambda: f"{pattern!r} in edgefn dev's output:\n{tail(log)}",
    )


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)


@contextmanager
def dev(directory: Path, log: Path, extra: list[str] | None = None) -> Iterator[int]:
    """`edgefn dev directory [extra...]` once it watches (its port), ended on the way out."""
    process, port = start_dev(directory, log, extra=extra)
    with ended(process):
        wait_for_line(log, r"^Watching ", count=log.read_text().count("\nWatching ") + 1)
        yield port


def test_an_edit_is_served_once_the_reload_line_is_printed(tmp_path: Path) -> None:
    directory = write(tmp_path / "devfn", answer("before"))
    log = tmp_path / "dev.log"
    with dev(directory, log) as port:
        assert get(port, "/devfn/").text == "before"
        for n, text in enumerate(["after", "again"], start=2):
            (directory / "app.py").write_text(
                "from edgefn import App\napp = App()\n" + answer(text)
            )
            wait_for_line(log, rf"^Serving devfn \(version {n}\)")
            # The line means live: the first request after it, no retry.
            assert get(port, "/devfn/").text == text
        # A save that changes nothing publishes nothing; any file of the folder is source.
        (directory / "app.py").touch()
        (directory / "notes.txt").write_text("x")
        wait_for_line(log, r"^Serving devfn \(version 4\)")
        (directory / "app.py").touch()
        (directory / "app.py").write_text("from edgefn import App\napp = App()\n" + answer("last"))
        wait_for_line(log, r"^Serving devfn \(version 5\)")
        assert get(port, "/devfn/").text == "last"
    assert serving_lines(log, "devfn") == 5  # neither touch made a version
    assert "Traceback" not in log.read_text()


def test_assets_are_served_and_packed_again_only_when_they_change(tmp_path: Path) -> None:
    reader = "@app.get('/')\ndef index(request):\n    return open('/assets/a.txt').read()"
    directory = write(tmp_path / "devfn", reader + "\n", 'assets = "static"\n')
    (directory / "static").mkdir()
    (directory / "static" / "a.txt").write_text("one")
    log = tmp_path / "dev.log"
    with dev(directory, log) as port:
        assert get(port, "/devfn/").text == "one"
        [archive] = tmp_path.glob("edgefn-dev-*/assets-packed/devfn.tar.gz")  # TMPDIR
        packed = archive.stat().st_mtime_ns
        write(directory, reader + ".upper()\n", 'assets = "static"\n')
        wait_for_line(log, r"^Serving devfn \(version 2\)")
        assert get(port, "/devfn/").text == "ONE"
        assert archive.stat().st_mtime_ns == packed  # a source edit: not packed again
        (directory / "static" / "a.txt").write_text("two")
        wait_for_line(log, r"^Serving devfn \(version 3\)")
        assert get(port, "/devfn/").text == "TWO"
        assert archive.stat().st_mtime_ns != packed


def test_a_syntax_error_shows_file_and_line_and_a_fix_recovers(tmp_path: Path) -> None:
    directory = write(tmp_path / "devfn", answer("fine"))
    log = tmp_path / "dev.log"
    with dev(directory, log) as port:
        (directory / "app.py").write_text("from edgefn import App\napp = App(\n")
        wait_for_line(log, r"^Serving devfn \(version 2\)")
        response = get(port, "/devfn/")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("text/plain")
        first = response.text.splitlines()[0]
        assert first == "edgefn dev: app.py, line 2: SyntaxError: '(' was never closed"
        assert "_dev.py" not in response.text  # the runner's own frames are left out
        # The terminal says it too, at the save (the native check) and from the
        # function's log at the request.
        wait_for_line(log, r"^devfn: app\.py:2:\d+: SyntaxError: '\(' was never closed")
        wait_for_line(log, r"^\[devfn\] edgefn dev: app\.py, line 2: SyntaxError")

        write(directory, answer("fixed"))
        wait_for_line(log, r"^Serving devfn \(version 3\)")
        assert get(port, "/devfn/").text == "fixed"


def test_an_import_error_names_the_function_s_line(tmp_path: Path) -> None:
    directory = write(tmp_path / "devfn", answer("fine"))
    (directory / "helpers.py").write_text("X = 1\nY = undefined_name\n")
    log = tmp_path / "dev.log"
    with dev(directory, log) as port:
        (directory / "app.py").write_text("import helpers\n" + (directory / "app.py").read_text())
        wait_for_line(log, r"^Serving devfn \(version 2\)")
        response = get(port, "/devfn/")
        assert response.status_code == 500
        lines = response.text.splitlines()
        assert lines[0] == (
            "edgefn dev: helpers.py, line 2: NameError: name 'undefined_name' is not defined"
        )
        assert '  File "app.py", line 1, in <module>' in lines
        assert '  File "helpers.py", line 2, in <module>' in lines
        wait_for_line(log, r"^devfn: helpers\.py:2: importing entry module 'app' failed")
        # Fixed in the other file: recovers as well.
        (directory / "helpers.py").write_text("X = 1\n")
        wait_for_line(log, r"^Serving devfn \(version 3\)")
        assert get(port, "/devfn/").text == "fine"


def test_a_requirements_change_is_a_full_build_and_its_package_imports(tmp_path: Path) -> None:
    app = (
        "import six\n"
        + answer("no")
        + "@app.get('/six')\ndef v(request):\n    return six.__version__\n"
    )
    directory = write(tmp_path / "devfn", answer("plain"))
    log = tmp_path / "dev.log"
    with dev(directory, log) as port:
        before = log.read_text()
        assert "requirements changed" not in before
        # The requirement before the code that imports it, as a developer would.
        manifest = 'name = "devfn"\nrequirements = ["six==1.17.0"]\n'
        (directory / "edgefn.toml").write_text(manifest)
        wait_for_line(log, r"^devfn: requirements changed: a full build")
        wait_for_line(log, r"^Serving devfn \(version 2\)")
        (directory / "app.py").write_text("from edgefn import App\napp = App()\n" + app)
        wait_for_line(log, r"^Serving devfn \(version 3\)")
        assert get(port, "/devfn/six").text == "1.17.0"


def test_several_functions_kv_secrets_and_loopback_origins(tmp_path: Path) -> None:
    with OriginServer() as origin:
        store = write(
            tmp_path / "store",
            "from edgefn import kv, secrets\n"
            "@app.get('/')\ndef index(request):\n"
            "    n = kv.open('default').incr('hits')\n"
            "    return f\"{n} {secrets.get('TOKEN')} {secrets.get('OTHER')}\"\n",
            'route = "/s"\nkey_value_stores = ["default"]\nsecrets = ["TOKEN", "OTHER", "UNSET"]\n',
        )
        (store / ".edgefn").mkdir()
        (store / ".edgefn" / "dev-secrets").write_text("# local\nOTHER=from file\nTOKEN=file\n")
        proxy = write(
            tmp_path / "proxy",
            "from edgefn import fetch\n"
            "@app.get('/')\ndef index(request):\n"
            f"    return str(fetch({origin.url('/status/203')!r}).status)\n",
            f'allowed_outbound_hosts = ["{origin.url("")}"]\n',
        )
        log = tmp_path / "dev.log"
        for expected in ("1", "2"):  # the key-value data outlives a restart
            with dev(store, log, extra=[str(proxy), "--secret", "TOKEN=flag"]) as port:
                assert get(port, "/s/").text == f"{expected} flag from file"
                assert get(port, "/proxy/").text == "203"
                if expected == "2":
                    # An edit of the secrets file is live without a restart, a value
                    # taken out of it is gone; the --secret flag still wins.
                    secrets = store / ".edgefn" / "dev-secrets"
                    secrets.write_text("TOKEN=file\nOTHER=edited\n")
                    wait_for_line(log, r"^store: secrets read again from .*dev-secrets$")
                    wait_until(
                        lambda: get(port, "/s/").text.endswith(" flag edited"),
                        timeout=10,
                        message="the edited secret",
                    )
                    secrets.write_text("TOKEN=file\n")
                    wait_for_line(log, r"^store: secrets read again", count=2)
                    wait_until(
                        lambda: get(port, "/s/").text.endswith(" flag None"),
                        timeout=10,
                        message="the secret taken out of the file to be unset",
                    )
        text = log.read_text()
        assert "store: secret UNSET is not set" in text
        assert "loopback ones (127.0.0.0/8, ::1/128) included in dev" in text
        assert "--token dev" not in text and re.search(r"--token \S{20,}", text)
        assert (store / ".edgefn" / "dev" / "registry.sqlite3").is_file()
        assert origin.hits("/status/203") == 2


def test_the_log_tail_prints_a_burst_whole(tmp_path: Path) -> None:
    registry = SQLiteRegistry(tmp_path)
    printed: list[str] = []
    tail = LogTail(registry, lambda: ["fn"], printed.append)
    lines = [f"line {n}" for n in range(3000)]
    try:
        # A burst within one poll: each line once, in order ...
        registry.append_logs(("fn", time.time(), "r", "log", line) for line in lines[:900])
        tail._print("fn")
        assert printed == [f"[fn] {line}" for line in lines[:900]]
        tail._print("fn")
        assert len(printed) == 900
        # ... and one over what the registry keeps says lines were left out.
        registry.append_logs(("fn", time.time(), "r", "log", line) for line in lines[900:])
        tail._print("fn")
    finally:
        registry.close()
    assert printed[900].startswith("[fn] ... (lines may have been left out: ")
    assert printed[901:] == [f"[fn] {line}" for line in lines[2000:]]


def test_the_edge_cache_is_off_unless_asked(tmp_path: Path) -> None:
    directory = write(
        tmp_path / "devfn",
        "from edgefn import Response, kv\n"
        "@app.get('/')\ndef index(request):\n"
        "    n = kv.open('default').incr('runs')\n"
        "    return Response(str(n), headers={'cache-control': 'public, max-age=60'})\n",
        'key_value_stores = ["default"]\n',
    )
    log = tmp_path / "dev.log"
    # Off: every request runs the function. With --cache: the second is the first's copy.
    for flags, answers in (([], ["1", "2"]), (["--cache"], ["3", "3"])):
        with dev(directory, log, extra=flags) as port:
            assert [get(port, "/devfn/").text for _ in answers] == answers
    assert "edge cache off (--cache turns it on)" in log.read_text()


def test_the_dev_runner_is_never_deployed(tmp_path: Path) -> None:
    runner = build_dev_runner((), CACHE_DIR)
    # A gateway's engine (as `edgefn serve` and the admin API use) refuses it.
    registry = SQLiteRegistry(tmp_path / "data")
    gateway = Engine(cache_dir=CACHE_DIR)
    try:
        deployer = Deployer(registry, gateway, tmp_path / "data")
        with runner.wasm.open("rb") as component, pytest.raises(InvalidComponent) as refused:
            deployer.deploy('name = "sneaky"\n', component)
        assert "dev runner, which serves only under `edgefn dev`" in str(refused.value)
        assert registry.functions() == []
    finally:
        gateway.close()
        registry.close()
    # Only an engine with the dev capability serves it, from the source it is granted.
    engine = Engine(cache_dir=CACHE_DIR, capabilities=installed(dev=True))
    try:
        source = write(tmp_path / "fn", answer("from source"))
        grants = {"function": "fn", "dev": DevSource(source, "app:app")}
        sandbox = engine.load(runner.wasm, grants=grants)
        assert sandbox.invoke(Request("GET", "/")).response.body == b"from source"
        # Without a source granted, it says so rather than serving anything.
        outcome = engine.load(runner.wasm, grants={"function": "fn"}).invoke(Request("GET", "/"))
        assert outcome.response.status == 500
        assert outcome.response.body.startswith(b"edgefn dev: ValueError: Empty module name")
    finally:
        engine.close()


def test_secrets_parsing(tmp_path: Path) -> None:
    assert parse_secret("A=b=c", "--secret") == ("A", "b=c")
    assert parse_secret("A=", "--secret") == ("A", "")
    with pytest.raises(DevError, match="expected NAME=VALUE") as refused:
        parse_secret("s3cret-value", "--secret")
    assert "s3cret" not in str(refused.value)  # a value typed in the wrong place is not shown
    assert parse_secret("TOKEN", "--secret", {"TOKEN": "from env"}) == ("TOKEN", "from env")
    with pytest.raises(DevError, match="no variable of that name"):
        parse_secret("TOKEN", "--secret", {})
    with pytest.raises(DevError, match="letters, digits"):
        parse_secret("1BAD=x", "--secret")
    assert read_secrets(tmp_path) == {}
    (tmp_path / ".edgefn").mkdir()
    (tmp_path / ".edgefn" / "dev-secrets").write_text("\n# c\nA=1\n  B = 2\n")
    assert read_secrets(tmp_path) == {"A": "1", "B": " 2"}
    (tmp_path / ".edgefn" / "dev-secrets").write_text("A=1\nnope\n")
    with pytest.raises(DevError, match=r"dev-secrets, line 2: expected NAME=VALUE"):
        read_secrets(tmp_path)


def test_bad_arguments_stop_dev_before_it_serves(tmp_path: Path) -> None:
    a = write(tmp_path / "a", answer("a"))
    b = write(tmp_path / "b", answer("b"), 'route = "/a"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["dev", str(a), "--secret", "oops", "--port", "0"])
    assert result.exit_code == 2
    assert "Invalid value for --secret" in result.output
    assert "oops" not in result.output  # what may be a secret's value is not echoed
    result = runner.invoke(main, ["dev", str(a), str(b), "--port", "0"])
    assert result.exit_code == 1
    assert "both have the route '/a'" in result.output


@pytest.fixture(scope="module")
def dev_hostile(dev_engine: Engine, hostile_build: BuildResult) -> Sandbox:
    """tests/functions/hostile served by the dev runner, as `edgefn dev` serves it."""
    manifest = hostile_build.manifest
    runner = build_dev_runner((), CACHE_DIR)
    grants = manifest.grants() | {"dev": DevSource(HOSTILE, manifest.entry)}
    return dev_engine.load(runner.wasm, env=manifest.env, assets=HOSTILE / "assets", grants=grants)


@pytest.mark.parametrize(
    ("which", "imports"),
    [("json", True), ("_socket", True), ("fractions", False), ("own", False)],
)
def test_a_late_import_works_in_dev_exactly_when_it_works_deployed(
    hostile: Sandbox, dev_hostile: Sandbox, which: str, imports: bool
) -> None:
    # json: imported at the top; _socket: by socket, imported at the top (which the
    # runner preloads, so it must hand _socket back too); fractions: by nothing; own:
    # a module of the function's own, imported by nothing.
    for sandbox in (hostile, dev_hostile):
        request = Request("GET", f"/late-import/{which}")
        if imports:
            assert sandbox.invoke(request).response.body == which.encode()
        else:
            with pytest.raises(GuestError, match="ModuleNotFoundError"):
                sandbox.invoke(request)


def test_a_dev_grant_mounts_nothing_on_a_gateway_engine(
    engine: Engine, dev_engine: Engine, hostile_build: BuildResult, tmp_path: Path
) -> None:
    # A registry row edited to carry a source folder: no gateway capability mounts it.
    grants = {"function": "hostile", "dev": DevSource(tmp_path, "app:app")}
    assert engine.load(hostile_build.path, grants=grants).directories == {}
    assert dev_engine.load(hostile_build.path, grants=grants).directories == {"/src": tmp_path}


def test_snapshots_take_source_files_only_and_cover_the_assets(tmp_path: Path) -> None:
    directory = write(tmp_path / "fn", answer("x"), 'assets = "static"\n')
    (directory / "static").mkdir()
    (directory / "static" / "logo.png").write_bytes(b"1")
    (directory / ".#app.py").symlink_to("nowhere")  # Emacs' lock file: a dangling link
    (directory / "app.py~").write_text("a backup")
    (directory / "gone").symlink_to("/nonexistent/file")
    os.mkfifo(directory / "pipe")  # reading it would block for ever
    latin = os.fsdecode(b"caf\xe9.py")  # a name that is not UTF-8
    (directory / latin).write_text("X = 1\n")
    manifest = load_manifest(directory)
    snapshots = Snapshots(tmp_path / "snapshots")
    first = snapshots.take(directory, manifest)
    assert sorted(p.name for p in first.path.iterdir()) == sorted(["app.py", "edgefn.toml", latin])
    assert snapshots.take(directory, manifest) == first  # the same content
    # An asset's change is a change, though assets are deployed as assets, not copied.
    (directory / "static" / "logo.png").write_bytes(b"22")
    second = snapshots.take(directory, manifest)
    assert second.digest != first.digest and second.assets != first.assets
    assert second.assets is not None and second.path.name == second.digest
    # Whatever the assets archive would hold: a dot-file or a .wasm, not source, too.
    (directory / "static" / ".hidden").write_text("x")
    assert snapshots.take(directory, manifest).assets != second.assets
    (directory / "static" / ".hidden").unlink()
    assert snapshots.take(directory, manifest) == second
    write(directory, answer("y"), 'assets = "static"\n')
    assert snapshots.take(directory, manifest).assets == second.assets  # source only
    with (directory / "data.bin").open("wb") as big:
        big.truncate(MAX_FILE + 1)  # sparse: no disk used
    with pytest.raises(DevError, match=r"^data\.bin: 16,777,217 bytes; .* the manifest's assets"):
        snapshots.take(directory, manifest)


def test_a_module_level_loop_is_reported_and_ctrl_c_still_ends_dev(tmp_path: Path) -> None:
    directory = write(tmp_path / "devfn", answer("fine"), '[limits]\ntimeout = "1s"\n')
    log = tmp_path / "dev.log"
    process, port = start_dev(directory, log)
    with ended(process):
        wait_for_line(log, r"^Watching ")
        (directory / "app.py").write_text(
            "from edgefn import App\napp = App()\nwhile True:\n    pass\n"
        )
        wait_for_line(log, r"^Serving devfn \(version 2\)")
        # In the sandbox, the import is stopped at the request's limits (fuel, or time).
        stopped = get(port, "/devfn/")
        assert (stopped.status_code, stopped.json()["error"]["code"]) in {
            (503, "fuel_exhausted"),
            (504, "timeout"),
        }, stopped.text
        # Natively, the check gives up after 10 s and says why.
        wait_for_line(log, r"^devfn: importing entry module 'app' took over 10 s")
        (directory / "app.py").write_text(
            "from edgefn import App\napp = App()\nwhile True:\n    pass\n# 2\n"
        )
        wait_for_line(log, r"^Serving devfn \(version 3\)")
        started: list[int] = []

        def worker_and_check() -> bool:  # the check of version 3, looping again
            started[:] = children(process.pid)
            return len(started) == 2

        wait_until(worker_and_check, timeout=10, message="the check of version 3 to start")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0, tail(log)
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in started),
        timeout=5,
        message="the worker and the check to end with edgefn dev",
    )


def test_prepare_makes_the_dev_runner_and_exits(tmp_path: Path) -> None:
    # `make test` prepares the runner this way, beside the functions' builds.
    directory = write(tmp_path / "fn", answer("x"))
    result = CliRunner().invoke(
        main, ["dev", "--prepare", str(directory)], env={"EDGEFN_CACHE_DIR": str(CACHE_DIR)}
    )
    assert result.exit_code == 0, result.output
    assert "Watching" not in result.output  # it serves nothing
    runner = build_dev_runner((), CACHE_DIR)
    with Engine(cache_dir=CACHE_DIR) as engine:
        assert engine.aot.path_for(runner.sha256).is_file()  # compiled, not only built
