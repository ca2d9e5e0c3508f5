"""The developer loop: `edgefn dev` against the full build, on a copy of functions/hello.

Issue 21's targets: once the dev runner is cached, `edgefn dev` serves its first
request within 3 s of being started, and an edit to the function's Python source
is served within 1 s of the save (stretch: 0.3 s), median of 10 edits. Beside
them, in the same run, the full-build path an edit took before the dev runner
(and still takes for `edgefn deploy`): `edgefn build` (componentize-py) and the
Cranelift compile of the new component, for one edit.

An edit is timed from just before the file is written to the first response that
carries the edit's text, asked for every 5 ms on a kept-alive connection: the
watcher, the snapshot, the deploy to the dev gateway's registry, the worker's
swap and the fresh instance's import are all inside it.

    python bench/devloop.py [--edits 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from _targets import verdict  # noqa: E402

from edgefn_platform.builder import build, build_dev_runner  # noqa: E402
from edgefn_runtime import Engine  # noqa: E402
from edgefn_runtime.capabilities import installed  # noqa: E402
from gateway_process import ended, start_dev  # noqa: E402

CACHE_DIR = ROOT / ".cache" / "edgefn"  # start_dev's EDGEFN_CACHE_DIR
APP = """from edgefn import App

app = App()


@app.get("/")
def index(request):
    return {text!r}
"""


def _write(directory: Path, text: str) -> None:
    (directory / "app.py").write_text(APP.format(text=text))


def _until_served(client: httpx.Client, url: str, text: str, timeout: float = 60) -> float:
    """Seconds from now until `url` answers `text`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if client.get(url).text == text:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} did not answer {text!r} within {timeout} s")


def full_build(directory: Path) -> tuple[float, float]:
    """One edit the way `edgefn deploy` takes it: the build, and the compile."""
    _write(directory, f"full {uuid.uuid4().hex}")
    started = time.perf_counter()
    result = build(directory)
    built = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache:  # a cold AOT cache: it compiles
        engine = Engine(cache_dir=Path(cache))
        try:
            started = time.perf_counter()
            engine.load(result.path)
            compiled = time.perf_counter() - started
        finally:
            engine.close()
    return built, compiled


def dev_loop(directory: Path, edits: int, log: Path) -> tuple[float, list[float]]:
    """First serve of `edgefn dev`, then `edits` edits: their seconds to live."""
    first = f"first {uuid.uuid4().hex}"
    _write(directory, first)
    started = time.perf_counter()
    process, port = start_dev(directory, log)
    url = f"http://127.0.0.1:{port}/hello/"
    times = []
    with ended(process), httpx.Client(timeout=10) as client:
        _until_served(client, url, first)
        first_serve = time.perf_counter() - started
        for n in range(edits):
            text = f"edit {n} {uuid.uuid4().hex}"
            time.sleep(0.3)  # apart, as saves are: each its own change
            written = time.perf_counter()
            _write(directory, text)
            _until_served(client, url, text)
            times.append(time.perf_counter() - written)
    return first_serve, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args()
    print("dev runner: ", end="", flush=True)
    started = time.perf_counter()
    runner = build_dev_runner((), CACHE_DIR)
    engine = Engine(cache_dir=CACHE_DIR, capabilities=installed(dev=True))
    try:
        engine.load(runner.wasm)  # compiled into the AOT cache once, like a first `edgefn dev`
    finally:
        engine.close()
    print(f"ready in {time.perf_counter() - started:.1f} s (built and compiled unless cached)")

    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp) / "hello"
        shutil.copytree(
            ROOT / "functions" / "hello",
            directory,
            ignore=shutil.ignore_patterns(".edgefn", "tests"),
        )
        built, compiled = full_build(directory)
        shutil.rmtree(directory / ".edgefn")
        first_serve, times = dev_loop(directory, args.edits, Path(temp) / "dev.log")

    median = statistics.median(times)
    print(
        f"\nfull build per edit (1 edit): edgefn build {built:.1f} s + compile {compiled:.1f} s "
        f"= {built + compiled:.1f} s"
    )
    print(f"edgefn dev, first request served {first_serve:.2f} s after the command started")
    print(
        f"edgefn dev, edit -> live over {len(times)} edits: median {median * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
        f"({(built + compiled) / median:.0f}x faster than the full build)"
    )
    verdict(
        "first edgefn dev request, runner cached",
        f"{first_serve:.2f} s",
        "<= 3 s",
        first_serve <= 3,
    )
    verdict(
        f"edit -> live, median of {len(times)}", f"{median * 1000:.0f} ms", "<= 1 s", median <= 1
    )
    verdict("edit -> live, stretch", f"{median * 1000:.0f} ms", "<= 0.3 s", median <= 0.3)


if __name__ == "__main__":
    main()
