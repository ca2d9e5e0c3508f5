"""The operator's limit policy and the access log format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgefn_platform.gateway._access import AccessEntry
from edgefn_platform.gateway._cores import available_cores
from edgefn_platform.gateway.policy import ConfigError, Policy, load_policy


def test_override_beats_manifest_beats_default_and_maximums_clamp() -> None:
    policy = Policy()
    effective = policy.resolve({"memory": 128 * 2**20, "fuel": 10**12}, {"timeout": 3.0})
    assert effective.sources["memory"] == "manifest"
    assert effective.sources["timeout"] == "override" and effective.limits.timeout == 3.0
    assert effective.sources["max_body"] == "default"
    assert effective.sources["fuel"] == "maximum"
    assert effective.limits.fuel == policy.maximums["fuel"]
    assert effective.warnings == [
        "fuel: 1,000,000,000,000 asked for (manifest), above the maximum of "
        "50,000,000,000, which applies"
    ]
    assert effective.concurrency == available_cores()  # the default: one per core


def cgroup(root: Path, proc: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc)
    for name, text in files.items():
        (root / "sys/fs/cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("proc", "files", "cores"),
    [
        # cgroup v2, a container's own namespace: `docker run --cpus 1.5`
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # cgroup v2 seen from the host: the process's own directory
        ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "100000 100000"}, 1),
        # cgroup v1, Kubernetes' `limits.cpu: 1` (cpu and cpuacct mounted together)
        (
            "4:cpu,cpuacct:/kubepods/pod1\n1:memory:/x\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            1,
        ),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ("", {}, None),  # no cgroup information at all
    ],
)
def test_default_concurrency_follows_the_cores_and_a_containers_cpu_limit(
    tmp_path: Path, proc: str, files: dict[str, str], cores: int | None
) -> None:
    affinity = len(os.sched_getaffinity(0))
    root = cgroup(tmp_path, proc, files)
    assert available_cores(root) == min(affinity, cores or affinity)


def test_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[defaults]\nmemory = "32MiB"\n[maximums]\ntimeout = "5s"\n'
        '[backpressure]\nqueue_wait = "250ms"\nbody_budget = "64MiB"\n'
        "[observability]\nusage_header = true\n"
    )
    policy = load_policy(
        config, {"EDGEFN_DEFAULTS_MEMORY": "48MiB", "EDGEFN_BACKPRESSURE_QUEUE_LENGTH": "3"}
    )
    assert policy.defaults["memory"] == 48 * 2**20  # the variable wins
    assert policy.maximums["timeout"] == 5.0
    assert (policy.queue_wait, policy.queue_length, policy.usage_header) == (0.25, 3, True)
    assert policy.body_budget == 64 * 2**20
    assert load_policy(None, {}).body_budget == 256 * 2**20


def test_a_lowered_maximum_lowers_the_default() -> None:
    policy = load_policy(None, {"EDGEFN_MAXIMUMS_MAX_IMAGE_PIXELS": "5e6"})
    assert policy.defaults["max_image_pixels"] == 5_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\n", "unknown section [limits]"),
        ("[defaults]\ncpu = 1\n", "defaults.cpu: unknown limit"),
        ('[maximums]\nmemory = "lots"\n', "maximums.memory"),
        ('[defaults]\nmemory = "1MiB"\n', "at least 16MiB"),
        ("[backpressure]\nqueue = 1\n", "backpressure.queue: unknown key"),
        ("[cache]\nsize = 1\n", "cache.size: unknown key"),
        ('[cache]\nmemory = "lots"\n', "cache.memory: expected a size"),
        ('[cache]\nenabled = "maybe"\n', "cache.enabled: expected true or false"),
        ("not toml [", "gateway.toml"),
    ],
)
def test_config_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_policy(config, {})


def test_cache_section_and_variables(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[cache]\nmemory = "8MiB"\ndir = "edge"\nmax_object = "1MiB"\n')
    environ = {"EDGEFN_CACHE_DISK": "0", "EDGEFN_CACHE_ENABLED": "false"}
    # EDGEFN_CACHE_DIR is --cache-dir (compiled components), not the edge cache's dir.
    environ["EDGEFN_CACHE_DIR"] = "/somewhere/else"
    cache = load_policy(config, environ).cache
    assert (cache.memory, cache.disk, cache.max_object) == (8 * 2**20, 0, 2**20)
    assert cache.enabled is False and cache.dir == Path("edge").resolve()
    assert load_policy(None, {}).cache.enabled is True


def test_access_entry_formats() -> None:
    entry = AccessEntry(
        time=0.0,
        request_id="abcdef0123",
        function="hello",
        version=2,
        method="GET",
        path="/hello/",
        status=200,
        outcome="ok",
        queue_ms=0.1,
        instantiate_ms=0.5,
        execute_ms=0.7,
        total_ms=1.5,
        fuel=123456,
        bytes_in=0,
        bytes_out=31,
        worker=7,
    )
    assert json.loads(entry.json())["fuel"] == 123456
    assert entry.human().endswith("200 GET /hello/ -> hello@2 ok 1.5 ms fuel 123,456 [abcdef0123]")
