"""Shared fixtures: one engine and one build per test function per session.

Components are built by `edgefn_platform.build`, which skips the build when the
source hash is unchanged, and compiled ahead of time into `.cache/edgefn`, so a
second `make test` reuses both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = Path(__file__).resolve().parent / "functions"
os.environ.setdefault("EDGEFN_CACHE_DIR", str(ROOT / ".cache" / "edgefn"))
# Nothing a run writes lands in the checkout outside .cache/: bytecode of the
# modules imported from here on, in this process and in every one it starts
# (the builder and the gateways import the functions' and tests' sources) ...
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = str(ROOT / ".cache" / "pycache")
# ... and what hypothesis keeps (its example database, by default in ./.hypothesis;
# read when it first needs it, after this).
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(ROOT / ".cache" / "hypothesis"))

from origin_server import OriginServer  # noqa: E402

import attacks  # noqa: E402
import process_leaks  # noqa: E402
from edgefn_platform import BuildResult, build  # noqa: E402
from edgefn_platform.gateway._metrics import Metrics  # noqa: E402
from edgefn_runtime import Engine, Sandbox  # noqa: E402
from pg_cluster import Cluster  # noqa: E402

# Before any test starts a process: each inherits it (see process_leaks.py).
SESSION = process_leaks.mark_session()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Without the cache provider (`make fuzz`: -p no:cacheprovider), pyproject's
    # cache_dir is an option nothing declares: declared here, so it is not warned about.
    if pluginmanager.is_blocked("cacheprovider"):
        parser.addini("cache_dir", "where the cache provider would keep its cache")


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run when a process the tests started still runs at its end, after
    killing it: a child of this process, one carrying this session's marker, or
    one whose command line names the session's temporary directory. Set up before
    any other session fixture, so torn down after them all (the PostgreSQL server
    included)."""
    folders = [tmp_path_factory.getbasetemp()]
    yield
    killed = process_leaks.reap(os.getpid(), SESSION, folders=folders)
    if killed:
        pytest.fail(
            "processes the tests started were still running at the end of the session "
            "(now killed):\n" + "\n".join(f"  {leftover}" for leftover in killed),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A PostgreSQL server of this session's own, on a loopback port."""
    cluster = Cluster()
    try:  # its folder and server removed even when it fails to start
        cluster.init().start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def database_url(postgres: Cluster) -> str:
    """A new, empty database on the session's PostgreSQL server."""
    return postgres.database()


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    with Engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def hostile_build() -> BuildResult:
    """The fixture function with a route per misbehaviour (tests/functions/hostile)."""
    return build(FUNCTIONS / "hostile")


@pytest.fixture(scope="session")
def hostile(engine: Engine, hostile_build: BuildResult) -> Sandbox:
    manifest = hostile_build.manifest
    assets = FUNCTIONS / "hostile" / manifest.assets if manifest.assets else None
    return engine.load(hostile_build.path, env=manifest.env, assets=assets)


@pytest.fixture
def reused(engine: Engine, hostile_build: BuildResult) -> Sandbox:
    """The hostile fixture with up to 5 requests per instance (a fresh pool per test)."""
    manifest = hostile_build.manifest
    assets = FUNCTIONS / "hostile" / manifest.assets if manifest.assets else None
    return engine.load(hostile_build.path, env=manifest.env, assets=assets, reuse=5)


@pytest.fixture(scope="session")
def hello(engine: Engine) -> Sandbox:
    """The shipped example (functions/hello)."""
    result = build(ROOT / "functions" / "hello")
    return engine.load(result.path, env=result.manifest.env)


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metrics]:
    """A gateway's metrics in this process, for one module's in-process apps.
    `Metrics` points PROMETHEUS_MULTIPROC_DIR (and prometheus_client's value class)
    at its directory: set for the module's tests only, so that no later test, and
    no gateway a later test starts, inherits it."""
    from prometheus_client import values

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        patch.setattr(values, "ValueClass", values.ValueClass)
        yield Metrics(tmp_path_factory.mktemp("metrics"))


@pytest.fixture(scope="module")
def origin() -> Iterator[OriginServer]:
    """A loopback origin server (tests/origin_server.py) on 127.0.0.1 for one
    module's outbound tests; its request counts start from zero in each test."""
    with OriginServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _origin_counts(request: pytest.FixtureRequest) -> None:
    if "origin" in request.fixturenames:
        origin = request.getfixturevalue("origin")
        if isinstance(origin, OriginServer):  # a module may name its own fixture so
            origin.reset()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a green run without -k/-m, save the attacks it recorded to
    .cache/attacks.json, which `make attacks` renders into docs/ATTACKS.md."""
    options = session.config.option
    selected = options.keyword or options.markexpr or options.collectonly
    if exitstatus == 0 and not selected and attacks.RECORDED:
        attacks.save()
