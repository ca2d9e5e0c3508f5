"""Secrets: encrypted at rest with the operator's key (`edgefn_platform.secrets`),
set through the admin API and `edgefn secrets`, live on every worker of every
gateway without a redeploy, and never shown anywhere once set (the grep test)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet, InvalidToken
from origin_server import OriginServer

import attacks
from edgefn_platform import build
from edgefn_platform.cli import main
from edgefn_platform.client import AdminClient
from edgefn_platform.gateway._rollout import ServingBoard
from edgefn_platform.registry import SecretRecord, open_registry
from edgefn_platform.secrets import Cipher, SecretsKeyError, SecretValues, load_keys
from gateway_process import ROOT, GatewayProcess
from pg_cluster import Cluster
from waiting import wait_until

pytestmark = pytest.mark.wasm

AREA = "Secrets (tests/test_secrets.py)"
FUNCTION = ROOT / "tests" / "functions" / "secret_user"
NAME = "secret-user"
KEY = Fernet.generate_key().decode()
# Requests on new connections, which the kernel spreads over a gateway's two
# workers (SO_REUSEPORT): each worker is missed with probability 2^-FRESH.
FRESH = 16


def distinctive() -> str:
    """A value found nowhere unless it leaked."""
    return f"s3cr3t-{uuid.uuid4().hex}"


# -- the key and the cipher -----------------------------------------------------


def test_a_value_round_trips_and_the_token_holds_no_plaintext() -> None:
    cipher = Cipher((KEY,))
    value = distinctive()
    token = cipher.encrypt(value)
    assert value.encode() not in token
    assert cipher.decrypt(token) == value


def test_rotation_old_and_new_key_then_rotate_then_old_key_removed(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    registry = open_registry(None, tmp_path)
    try:
        values = {f"NAME_{i}": distinctive() for i in range(3)}
        for name, value in values.items():
            registry.set_secret("fn", name, Cipher((old,)).encrypt(value))
        both = Cipher((new, old))  # the new key first: it encrypts, both decrypt
        assert {r.name: both.decrypt(r.value) for r in registry.secrets()} == values
        generation = registry.change_token()
        assert registry.reencrypt_secrets(both.rotate) == 3
        assert registry.change_token() > generation  # announced: every worker refreshes
        only_new = Cipher((new,))
        assert {r.name: only_new.decrypt(r.value) for r in registry.secrets("fn")} == values
        with pytest.raises(InvalidToken):
            Cipher((old,)).decrypt(registry.secrets()[0].value)
    finally:
        registry.close()


def test_a_value_that_does_not_decrypt_reads_none_with_one_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    value = distinctive()
    row = SecretRecord("fn", "ORIGIN_TOKEN", Cipher((KEY,)).encrypt(value), time.time())
    values = SecretValues(Cipher((Fernet.generate_key().decode(),)))
    with caplog.at_level(logging.WARNING, logger="edgefn.secrets"):
        values.update([row])
        values.update([row])  # unchanged: not decrypted (nor warned about) again
    assert values.get("fn", "ORIGIN_TOKEN") is None
    assert len(caplog.records) == 1, caplog.text
    assert "ORIGIN_TOKEN" in caplog.text and "fn" in caplog.text
    assert value not in caplog.text and KEY not in caplog.text


def test_an_update_decrypts_only_what_changed() -> None:
    decrypted: list[bytes] = []

    class Counting(Cipher):
        def decrypt(self, token: bytes) -> str:
            decrypted.append(token)
            return super().decrypt(token)

    cipher = Counting((KEY,))
    a = SecretRecord("fn", "A", cipher.encrypt("a"), 1.0)
    b = SecretRecord("fn", "B", cipher.encrypt("b"), 1.0)
    values = SecretValues(cipher)
    values.update([a, b])
    b2 = SecretRecord("fn", "B", cipher.encrypt("b2"), 2.0)
    values.update([a, b2])
    assert decrypted == [a.value, b.value, b2.value]
    assert (values.get("fn", "A"), values.get("fn", "B")) == ("a", "b2")
    values.update([a])
    assert values.get("fn", "B") is None  # removed
    assert values.get("other", "A") is None  # per function


def test_keys_come_comma_separated_or_one_per_line_newest_first(tmp_path: Path) -> None:
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert load_keys(f"{new}, {old}", None) == (new, old)
    path = tmp_path / "key"
    path.write_text(f"{new}\n\n{old}\n")
    path.chmod(0o600)
    assert load_keys(None, path) == (new, old)
    assert load_keys(None, None) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_file_open_to_group_or_others_is_refused_like_ssh(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(mode)
    with pytest.raises(SecretsKeyError, match=f"chmod 600 {path}") as caught:
        load_keys(None, path)
    assert KEY not in str(caught.value)
    attacks.record(
        AREA,
        f"a secrets key file readable or writable by group/others (mode {oct(mode)})",
        "refused at start: SecretsKeyError naming the file and `chmod 600`",
    )


@pytest.mark.parametrize(
    "value",
    [
        "not-a-key-" + "x" * 34,
        KEY[:-2],
        f"{KEY},definitely-not-a-key",
        " , ",
    ],
)
def test_a_malformed_key_is_refused_without_printing_it(value: str) -> None:
    with pytest.raises(SecretsKeyError) as caught:
        load_keys(value, None)
    for part in value.split(","):
        if part.strip():
            assert part.strip() not in str(caught.value)


def test_serve_with_a_malformed_key_stops_at_start_without_printing_it(tmp_path: Path) -> None:
    bad = "MALFORMED-" + uuid.uuid4().hex
    result = CliRunner().invoke(
        main, ["serve", "--data-dir", str(tmp_path)], env={"EDGEFN_SECRETS_KEY": bad}
    )
    assert result.exit_code != 0
    assert "not a Fernet key" in result.output and "keygen" in result.output
    assert bad not in result.output


def test_serve_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    path.chmod(0o644)
    result = CliRunner().invoke(
        main,
        ["serve", "--data-dir", str(tmp_path / "d"), "--secrets-key-file", str(path)],
        env={"EDGEFN_SECRETS_KEY": None},
    )
    assert result.exit_code != 0 and "chmod 600" in result.output, result.output
    assert KEY not in result.output


def test_keygen_prints_a_new_fernet_key_each_time() -> None:
    keys = [CliRunner().invoke(main, ["secrets", "keygen"]).output.strip() for _ in range(2)]
    assert keys[0] != keys[1]
    for key in keys:
        Fernet(key.encode())  # a valid key


# -- through a real gateway -------------------------------------------------------


def manifest(origin: OriginServer) -> str:
    text = (FUNCTION / "edgefn.toml").read_text()
    return text.replace('ORIGIN = "http://127.0.0.1:1"', f'ORIGIN = "{origin.base}"')


def deploy(gateway: GatewayProcess, origin: OriginServer) -> dict[str, Any]:
    result = AdminClient(gateway.admin_url, gateway.token).deploy(
        manifest(origin), build(FUNCTION).path
    )
    gateway.wait_serving(NAME)
    return result


_ENV = {"EDGEFN_SECRETS_KEY": KEY, "EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32"}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, origin: OriginServer
) -> Iterator[tuple[GatewayProcess, dict[str, Any]]]:
    """A gateway of two workers with a secrets key, serving NAME; the deploy's answer."""
    with GatewayProcess(
        tmp_path_factory.mktemp("secrets") / "data", workers=2, extra_env=_ENV
    ) as process:
        yield process, deploy(process, origin)


@pytest.fixture
def gateway(served: tuple[GatewayProcess, dict[str, Any]]) -> GatewayProcess:
    return served[0]


def secrets_cli(gateway: GatewayProcess, *args: str, value: str | None = None) -> Result:
    """`edgefn secrets <args>` against `gateway`, `value` piped on stdin."""
    return CliRunner().invoke(
        main,
        ["secrets", *args, "--gateway", gateway.admin_url, "--token", gateway.token],
        input=value,
    )


def reads(gateway: GatewayProcess, name: str = "ORIGIN_TOKEN") -> set[Any]:
    """What the function reads on FRESH new connections (every worker, likely)."""
    found = set()
    for _ in range(FRESH):
        response = httpx.get(f"{gateway.public_url}/{NAME}/read/{name}", timeout=30)
        assert response.status_code == 200, response.text
        found.add(response.json()["value"])
    return found


def test_a_deploy_warns_of_each_declared_secret_that_is_not_set(
    served: tuple[GatewayProcess, dict[str, Any]],
) -> None:
    gateway, deployed = served
    warnings = " ".join(deployed["warnings"])
    assert "ORIGIN_TOKEN" in warnings and "NEVER_SET" in warnings, deployed
    assert f"edgefn secrets set {NAME} NEVER_SET" in warnings
    assert reads(gateway, "NEVER_SET") == {None}


def test_cli_set_ls_rm_apply_to_every_worker_at_once(gateway: GatewayProcess) -> None:
    value = distinctive()
    result = secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=value + "\n")
    assert result.exit_code == 0, result.output
    assert value not in result.output
    assert reads(gateway) == {value}  # the set answered once every worker reads it
    listed = secrets_cli(gateway, "ls", NAME)
    assert listed.exit_code == 0, listed.output
    lines = dict(line.split("\t", 1) for line in listed.output.splitlines())
    assert lines["ORIGIN_TOKEN"].endswith("\tdeclared") and "not set" not in lines["ORIGIN_TOKEN"]
    assert lines["NEVER_SET"] == "not set\tdeclared"
    assert value not in listed.output
    other = distinctive()
    assert secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=other).exit_code == 0
    assert reads(gateway) == {other}
    removed = secrets_cli(gateway, "rm", NAME, "ORIGIN_TOKEN")
    assert removed.exit_code == 0, removed.output
    assert reads(gateway) == {None}
    again = secrets_cli(gateway, "rm", NAME, "ORIGIN_TOKEN")
    assert again.exit_code == 1 and "has no secret ORIGIN_TOKEN" in again.output


def test_an_empty_value_is_refused(gateway: GatewayProcess) -> None:
    result = secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value="")
    assert result.exit_code == 2 and "empty" in result.output


def test_a_secret_may_be_set_before_the_functions_first_deploy(gateway: GatewayProcess) -> None:
    response = gateway.admin("PUT", "/v1/functions/not-yet/secrets/API_KEY", json={"value": "v"})
    assert response.status_code == 200, response.text
    assert response.json()["declared"] is False
    listed = gateway.admin("GET", "/v1/functions/not-yet/secrets").json()["secrets"]
    assert [(s["name"], s["declared"]) for s in listed] == [("API_KEY", False)]
    assert "value" not in listed[0]
    assert gateway.admin("DELETE", "/v1/functions/not-yet/secrets/API_KEY").status_code == 204


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/functions/Bad_Name/secrets/A", {"value": "v"}, 400, "invalid_function_name"),
        (f"/v1/functions/{NAME}/secrets/1BAD", {"value": "v"}, 400, "invalid_secret_name"),
        (f"/v1/functions/{NAME}/secrets/A-B", {"value": "v"}, 400, "invalid_secret_name"),
        (f"/v1/functions/{NAME}/secrets/A", {"value": "v" * 65537}, 400, "invalid_request"),
        (f"/v1/functions/{NAME}/secrets/A", {"val": "v"}, 400, "invalid_request"),
        (f"/v1/functions/{NAME}/secrets/A", {"value": 5}, 400, "invalid_request"),
    ],
)
def test_bad_sets_are_refused_saying_why(
    gateway: GatewayProcess, path: str, body: Any, status: int, code: str
) -> None:
    response = gateway.admin("PUT", path, json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


@pytest.mark.parametrize("token", [None, "wrong"])
def test_secrets_routes_need_the_admin_token(gateway: GatewayProcess, token: str | None) -> None:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    for method, path in [
        ("GET", f"/v1/functions/{NAME}/secrets"),
        ("PUT", f"/v1/functions/{NAME}/secrets/ORIGIN_TOKEN"),
        ("DELETE", f"/v1/functions/{NAME}/secrets/ORIGIN_TOKEN"),
        ("POST", "/v1/secrets/rotate"),
    ]:
        response = httpx.request(
            method, gateway.admin_url + path, headers=headers, json={"value": "x"}
        )
        assert response.status_code == 401, (method, path, response.text)
    attacks.record(
        AREA, "read, set, remove or rotate secrets without the admin token", "401, nothing changed"
    )


def test_the_database_and_its_wal_hold_no_plaintext_value(gateway: GatewayProcess) -> None:
    values = [distinctive() for _ in range(3)]
    for number, value in enumerate(values):
        response = gateway.admin(
            "PUT", f"/v1/functions/{NAME}/secrets/KEPT_{number}", json={"value": value}
        )
        assert response.status_code == 200, response.text
    files = sorted(gateway.data_dir.glob("registry.sqlite3*"))
    assert {f.name for f in files} >= {"registry.sqlite3", "registry.sqlite3-wal"}, files
    for file in files:
        data = file.read_bytes()
        for value in values:
            assert value.encode() not in data, file
    names = b"".join(f.read_bytes() for f in files)
    assert b"KEPT_0" in names  # names are plaintext (README)
    attacks.record(
        AREA,
        "read secrets from the registry's database file (and its -wal), e.g. from a backup",
        "only Fernet tokens: no plaintext value in either file",
    )


def test_the_key_is_not_in_the_environment_of_the_gateways_workers(
    gateway: GatewayProcess,
) -> None:
    # The workers get the key with their configuration; their environment (and so
    # that of every process they or the supervisor start: builds, pip) goes without.
    pids = [w["pid"] for w in gateway.admin("GET", f"/v1/functions/{NAME}").json()["workers"]]
    assert len(pids) == 2 and gateway.process is not None
    assert gateway.process.pid not in pids
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"EDGEFN_SECRETS_KEY=")], pid
    value = distinctive()  # and they still decrypt what the other one encrypted
    assert secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=value).exit_code == 0
    assert reads(gateway) == {value}
    attacks.record(
        AREA,
        "read the secrets key from a worker's environment (/proc/PID/environ), or from a "
        "process the gateway starts",
        "absent: EDGEFN_SECRETS_KEY is dropped from the environment once read",
    )


def test_a_function_deleted_and_deployed_again_inherits_no_secret(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    assert secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=distinctive()).exit_code == 0
    assert gateway.admin("DELETE", f"/v1/functions/{NAME}").status_code == 204
    deploy(gateway, origin)  # a new function of the same name (and the module's again)
    listed = gateway.admin("GET", f"/v1/functions/{NAME}/secrets").json()["secrets"]
    assert {(s["name"], s["set_at"]) for s in listed} == {
        ("ORIGIN_TOKEN", None),
        ("NEVER_SET", None),
    }, listed
    assert reads(gateway) == {None}
    attacks.record(
        AREA,
        "delete a function, deploy another under its name, and read the old one's secrets",
        "`edgefn rm` removed them: the new function reads None, `secrets ls` shows not set",
    )


def test_rotate_through_the_cli_keeps_every_value_readable(gateway: GatewayProcess) -> None:
    value = distinctive()
    assert secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=value).exit_code == 0
    result = secrets_cli(gateway, "rotate")
    assert result.exit_code == 0 and "Encrypted" in result.output, result.output
    assert reads(gateway) == {value}


def test_the_value_appears_nowhere_but_where_the_function_sends_it(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    value = distinctive()
    assert secrets_cli(gateway, "set", NAME, "ORIGIN_TOKEN", value=value).exit_code == 0
    origin.reset()
    sent = gateway.get(f"/{NAME}/send")
    assert sent.status_code == 200 and sent.json() == {"status": 200, "delivered": True}, sent.text
    assert origin.hits("/echo") == 1
    crashed = gateway.get(f"/{NAME}/crash")
    assert crashed.status_code == 500, crashed.text
    answers = [sent, crashed]
    for method, path in [
        ("GET", f"/v1/functions/{NAME}"),
        ("GET", "/v1/functions"),
        ("GET", f"/v1/functions/{NAME}/versions"),
        ("GET", f"/v1/functions/{NAME}/secrets"),
        ("GET", f"/v1/functions/{NAME}/logs?limit=1000"),
        ("GET", f"/v1/functions/{NAME}/limits"),
        ("GET", "/metrics"),
        ("DELETE", f"/v1/functions/{NAME}/secrets/NEVER_SET"),  # an error message
        ("PUT", f"/v1/functions/{NAME}/secrets/bad-name"),
    ]:
        answers.append(gateway.admin(method, path, json={"value": value}))
    answers.append(httpx.get(gateway.public_url + "/metrics"))
    for cli_args in (["info", NAME], ["logs", NAME], ["secrets", "ls", NAME]):
        result = CliRunner().invoke(
            main, [*cli_args, "--gateway", gateway.admin_url, "--token", gateway.token]
        )
        assert result.exit_code == 0, result.output
        assert value not in result.output, cli_args
    for answer in answers:
        assert value not in answer.text, answer.request.url
        assert value not in str(answer.headers), answer.request.url
    assert value not in gateway.log.read_text(errors="replace")
    attacks.record(
        AREA,
        "find a secret's value in the admin API (info, secrets ls, logs, /metrics), the "
        "gateway's output, a crash's answer and log, or error messages",
        "absent from all of them after the function sent it to an origin and crashed",
    )


def test_without_a_key_the_gateway_starts_and_a_set_says_how_to_give_one(
    tmp_path: Path,
) -> None:
    assert "EDGEFN_SECRETS_KEY" not in os.environ
    with GatewayProcess(tmp_path / "data", workers=1) as gateway:
        response = gateway.admin("PUT", "/v1/functions/some-fn/secrets/TOKEN", json={"value": "v"})
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "no_secrets_key"
        assert "edgefn secrets keygen" in error["message"]
        assert "--secrets-key-file" in error["message"]
        result = secrets_cli(gateway, "set", "some-fn", "TOKEN", value="v")
        assert result.exit_code == 1 and "no secrets key" in result.output
        listed = gateway.admin("GET", "/v1/functions/some-fn/secrets")
        assert listed.status_code == 200 and listed.json() == {"secrets": []}


# -- two gateways sharing PostgreSQL ------------------------------------------------


@pytest.fixture(scope="module")
def pair(
    postgres: Cluster, tmp_path_factory: pytest.TempPathFactory, origin: OriginServer
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways of two workers each, one key, one PostgreSQL registry, serving NAME."""
    root, url = tmp_path_factory.mktemp("secrets-pair"), postgres.database()
    with (
        GatewayProcess(root / "a", workers=2, database_url=url, extra_env=_ENV) as a,
        GatewayProcess(root / "b", workers=2, database_url=url, extra_env=_ENV) as b,
    ):
        deploy(a, origin)
        b.wait_serving(NAME)
        yield a, b


@pytest.mark.parametrize("change", ["set", "rm"])
def test_a_change_through_one_gateway_reaches_every_worker_of_the_other_within_a_second(
    pair: tuple[GatewayProcess, GatewayProcess], change: str
) -> None:
    a, b = pair
    value = distinctive()
    if change == "rm":
        assert secrets_cli(a, "set", NAME, "ORIGIN_TOKEN", value=value).exit_code == 0
    sent = time.monotonic()
    if change == "set":
        result = secrets_cli(a, "set", NAME, "ORIGIN_TOKEN", value=value)
        expected: str | None = value
    else:
        result = secrets_cli(a, "rm", NAME, "ORIGIN_TOKEN")
        expected = None
    assert result.exit_code == 0, result.output
    returned = time.monotonic()
    generation = min(w.generation for w in ServingBoard(a.data_dir / "workers").workers())
    b_board = ServingBoard(b.data_dir / "workers")

    def b_applied() -> bool:
        states = b_board.workers()
        return len(states) == b.workers and all(w.generation >= generation for w in states)

    # Each of B's workers takes the secrets before it reports the generation.
    wait_until(b_applied, timeout=10, interval=0.01, message="B's workers to apply the change")
    applied = time.monotonic()
    print(
        f"{change}: A answered in {returned - sent:.3f} s; every worker of B had it "
        f"{applied - sent:.3f} s after it was sent"
    )
    assert applied - sent < 1.0
    assert reads(a) == {expected}
    assert reads(b) == {expected}
