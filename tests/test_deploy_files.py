"""deploy/: the Dockerfile, compose file and Kubernetes manifests, checked offline.

No container engine or cluster runs here, so the files are checked for what
can go wrong without one: schemas, references to files, and that every
variable they set is one the gateway reads, with a value it accepts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from edgefn_platform.cli import main
from edgefn_platform.gateway.policy import load_policy
from edgefn_platform.secrets import load_keys

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s(kind: str, external: bool = False) -> dict[str, Any]:
    """The manifest of `kind` (for a Service: the gateway's, or the database's)."""
    for path in manifests():
        document = yaml.safe_load(path.read_text())
        service_type = document.get("spec", {}).get("type")
        if document["kind"] == kind and (service_type == "ExternalName") == external:
            return document  # type: ignore[no-any-return]
    raise LookupError(kind)


def serve_variables() -> dict[str, click.Parameter]:
    """Each `EDGEFN_*` variable `edgefn serve` reads, and its option."""
    command = main.commands["serve"]  # type: ignore[attr-defined]
    return {p.envvar: p for p in command.params if isinstance(p.envvar, str)}


def check_variable(name: str, value: str) -> None:
    """`value` is what the gateway accepts for `name`: an option's type, or policy."""
    options = serve_variables()
    if name == "EDGEFN_SECRETS_KEY":  # read from the environment only, never an option
        load_keys(value or None, None)
        return
    if name in options:
        option = options[name]
        if not isinstance(option.type, click.Path):  # paths exist only in the container
            option.type_cast_value(click.Context(main), value)
        return
    assert re.match(r"EDGEFN_(DEFAULTS|MAXIMUMS|BACKPRESSURE|OBSERVABILITY)_", name), (
        f"{name} is not a variable the gateway reads"
    )
    load_policy(None, {name: value})


# -- Kubernetes -----------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_each_manifest_is_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validation_can_fail() -> None:
    broken = k8s("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in manifests()]
    namespace = k8s("Namespace")["metadata"]["name"]
    for path in manifests():
        document = yaml.safe_load(path.read_text())
        assert document["metadata"].get("namespace", namespace) == namespace, path.name


def test_the_deployment_is_what_the_issue_asks_for() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    image_user = [i["value"] for i in DockerfileParser(str(DEPLOY / "Dockerfile")).structure
                  if i["instruction"] == "USER"][-1]  # fmt: skip
    assert image_user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    # Termination outlasts the drain: the shutdown delay plus the drain timeout.
    configmap = k8s("ConfigMap")["data"]
    assert pod["terminationGracePeriodSeconds"] > 1 + float(configmap["drain-timeout"])
    # One worker per CPU of the limit.
    assert int(configmap["workers"]) == int(gateway["resources"]["limits"]["cpu"])
    # Every path the gateway writes is a volume (the root filesystem is read-only).
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    dockerfile = DockerfileParser(str(DEPLOY / "Dockerfile"))
    assert {"/tmp", str(Path(dockerfile.envs["EDGEFN_DATA_DIR"]).parent)} <= mounts
    assert (
        Path(dockerfile.envs["EDGEFN_CACHE_DIR"]).parent
        == Path(dockerfile.envs["EDGEFN_DATA_DIR"]).parent
    )


def test_the_deployment_sets_only_variables_the_gateway_reads() -> None:
    pod = k8s("Deployment")["spec"]["template"]["spec"]
    configmap, secret = k8s("ConfigMap")["data"], k8s("Secret")["stringData"]
    env, optional = {}, set()
    for variable in pod["containers"][0]["env"]:
        source = variable.get("valueFrom", {})
        if "configMapKeyRef" in source:
            env[variable["name"]] = configmap[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            reference = source["secretKeyRef"]
            if reference.get("optional") and reference["key"] not in secret:
                optional.add(variable["name"])  # the operator adds it (secret.yaml says how)
                continue
            env[variable["name"]] = secret[reference["key"]]
        else:
            env[variable["name"]] = variable["value"]
    assert {"EDGEFN_TOKEN", "EDGEFN_DATABASE_URL", "EDGEFN_CONFIG"} <= env.keys()
    assert optional == {"EDGEFN_SECRETS_KEY"}
    for name, value in env.items():
        check_variable(name, value)
    # PostgreSQL is external, reached through its ExternalName Service.
    database = k8s("Service", external=True)["metadata"]["name"]
    assert re.match(rf"postgresql://[^@]+@{database}:5432/", env["EDGEFN_DATABASE_URL"])
    # EDGEFN_CONFIG is the ConfigMap's gateway.toml, mounted.
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    (item,) = volume["configMap"]["items"]
    assert item["key"] == "gateway.toml"
    assert Path(mount["mountPath"]) / item["path"] == Path(env["EDGEFN_CONFIG"])


def test_the_configmap_policy_is_one_the_gateway_accepts(tmp_path: Path) -> None:
    for name, text in [
        ("k8s", k8s("ConfigMap")["data"]["gateway.toml"]),
        ("compose", (DEPLOY / "gateway.toml").read_text()),
    ]:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        policy = load_policy(path, {})
        assert policy.defaults["memory"] == 128 * 2**20, name


def test_the_hpa_and_pdb_target_the_deployment() -> None:
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s("Service")["spec"]["selector"].items() <= labels.items()


# -- Dockerfile -----------------------------------------------------------------


def test_every_package_is_in_the_non_editable_install() -> None:
    """The image installs with `pip install .`, which (unlike the editable install
    of `make install`) ships only the packages pyproject.toml lists."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, roots = set(setuptools["packages"]), setuptools["package-dir"]
    found = set()
    for name, root in roots.items():
        for init in (ROOT / root).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / root).as_posix()
            found.add(name if relative == "." else f"{name}.{relative.replace('/', '.')}")
    found = {name for name in found if ".templates." not in name}
    assert found and found <= listed, f"not in pyproject.toml: {sorted(found - listed)}"


def test_the_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    dockerfile = DockerfileParser(str(DEPLOY / "Dockerfile"))
    instructions = dockerfile.structure
    stages = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    assert len(stages) >= 2 and all("slim" in stage for stage in stages)
    final = instructions[max(i for i, x in enumerate(instructions) if x["instruction"] == "FROM") :]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and f":{dockerfile.envs['EDGEFN_PORT']}/" in healthcheck
    (entrypoint,) = [i["value"] for i in final if i["instruction"] == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["edgefn", "serve"]
    # The example functions are built in the image, not at start.
    assert any("edgefn build" in i["value"] for i in instructions if i["instruction"] == "RUN")


def test_the_dockerfile_copies_files_that_exist_and_sets_known_variables() -> None:
    dockerfile = DockerfileParser(str(DEPLOY / "Dockerfile"))
    for instruction in dockerfile.structure:
        if instruction["instruction"] == "COPY" and "--from" not in instruction["value"]:
            *sources, _target = instruction["value"].split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    edgefn = {k: v for k, v in dockerfile.envs.items() if k.startswith("EDGEFN_")}
    assert edgefn
    for name, value in edgefn.items():
        check_variable(name, value)


def test_the_dockerfile_copies_every_package_folder() -> None:
    """`pip install .` in the image needs each top-level folder a package lives in."""
    roots = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {Path(root).parts[0] for root in roots["package-dir"].values()}
    copied = set()
    for instruction in DockerfileParser(str(DEPLOY / "Dockerfile")).structure:
        if instruction["instruction"] == "COPY" and "--from" not in instruction["value"]:
            copied.update(instruction["value"].split()[:-1])
    assert folders and folders <= copied, f"not copied: {sorted(folders - copied)}"


# -- compose --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def gateways() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    return {n: s for n, s in services.items() if s.get("image", "").startswith("edgefn")}


def test_compose_runs_postgres_two_gateways_and_nginx() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert len(gateways()) == 2
    balancer = services["lb"]
    assert balancer["image"].startswith("nginx:")
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server ([\w-]+):(\d+)", nginx, re.MULTILINE)
    port = DockerfileParser(str(DEPLOY / "Dockerfile")).envs["EDGEFN_PORT"]
    assert sorted(upstreams) == sorted((name, port) for name in gateways())


def test_compose_files_and_build_context_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()


def test_compose_keeps_admin_apis_on_the_hosts_loopback() -> None:
    for name, service in gateways().items():
        for mapping in service["ports"]:
            host, _, container = mapping.rpartition(":")
            assert host.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
        environment = service["environment"]
        assert "EDGEFN_TOKEN" in environment and "EDGEFN_DATABASE_URL" in environment


def test_compose_sets_only_variables_the_gateway_reads() -> None:
    for service in gateways().values():
        for name, value in service["environment"].items():
            # ${VAR:-default} and ${VAR:?message}: check with the value compose would use.
            value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
            value = re.sub(r"\$\{\w+:\?[^}]*\}", "token", value)
            check_variable(name, value)
            if name == "EDGEFN_DEPLOY":
                # Split as click splits the variable of a repeatable path option.
                option = serve_variables()[name]
                assert option.multiple
                directories = option.type.split_envvar_value(value)
                assert len(directories) == 3
                for directory in directories:
                    # /opt/edgefn-functions/<name> in the image is functions/<name> here.
                    assert (ROOT / "functions" / Path(directory).name / "edgefn.toml").is_file()


def test_a_variable_the_gateway_does_not_read_is_caught() -> None:
    with pytest.raises(AssertionError, match="not a variable the gateway reads"):
        check_variable("EDGEFN_WORKER", "2")
    with pytest.raises(click.BadParameter):
        check_variable("EDGEFN_WORKERS", "two")
