"""The admin API's secrets routes (`edgefn secrets`). Values go in, never out:

    GET    /v1/functions/{name}/secrets          names, when set, whether declared
    PUT    /v1/functions/{name}/secrets/{key}    {"value": "..."}; encrypted, stored
    DELETE /v1/functions/{name}/secrets/{key}
    POST   /v1/secrets/rotate                    every value encrypted with the first key

A change answers once every worker of this gateway serves it, as a deploy does.
A secret may be set before its function's first deploy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.fernet import InvalidToken
from fastapi import FastAPI
from pydantic import BaseModel, Field

from edgefn_contract.secrets import check_name

from ..manifest import Manifest, check_function_name
from ..registry import FunctionNotFound
from ..secrets import HOW_TO_GIVE_A_KEY, Cipher, NoSecretsKey
from ._errors import GatewayError

if TYPE_CHECKING:
    from ..registry import Registry
    from ..secrets import SecretValues
    from ._rollout import Rollout

__all__ = ["SecretOut", "SecretsOut", "add_secrets_routes", "unset_secrets"]

# Largest value accepted: secrets are tokens and keys, and every worker keeps all
# of them decrypted in memory.
MAX_SECRET_VALUE = 64 * 1024


class SecretIn(BaseModel):
    value: str = Field(max_length=MAX_SECRET_VALUE, description="The secret's value (UTF-8)")


class SecretOut(BaseModel):
    name: str
    # When it was set (Unix time); None: declared by the active version, not set.
    set_at: float | None
    # Whether the function's active version declares it in `secrets`.
    declared: bool


class SecretsOut(BaseModel):
    secrets: list[SecretOut]


class RotateOut(BaseModel):
    rotated: int


GoLive = Callable[[str, str], "Rollout"]


def _declared(registry: Registry, name: str) -> tuple[str, ...]:
    try:
        record = registry.function(name)
    except FunctionNotFound:
        return ()
    return Manifest.from_dict(record.active.manifest).secrets


def unset_secrets(registry: Registry, name: str, declared: tuple[str, ...]) -> list[str]:
    """The deploy response's warnings for the declared secrets that are not set."""
    stored = {s.name for s in registry.secrets(name)}
    return [
        f"the secret {key} is declared but not set: the function reads None until "
        f"`edgefn secrets set {name} {key}`"
        for key in declared
        if key not in stored
    ]


class _SecretsRoutes:
    def __init__(self, registry: Registry, values: SecretValues, go_live: GoLive) -> None:
        self.registry, self.values, self.go_live = registry, values, go_live

    def _cipher(self) -> Cipher:
        if self.values.cipher is None:
            raise NoSecretsKey(
                f"this gateway has no secrets key to encrypt with: {HOW_TO_GIVE_A_KEY}"
            )
        return self.values.cipher

    def list(self, name: str) -> SecretsOut:
        """Each secret's name, when it was set, and whether the active version declares it."""
        _check_function(name)
        declared = set(_declared(self.registry, name))
        stored = {s.name: s.set_at for s in self.registry.secrets(name)}
        return SecretsOut(
            secrets=[
                SecretOut(name=key, set_at=stored.get(key), declared=key in declared)
                for key in sorted(declared | stored.keys())
            ]
        )

    def put(self, name: str, key: str, body: SecretIn) -> SecretOut:
        """Set (or replace) a secret; answers once every worker of this gateway reads it."""
        _check_function(name)
        _check_key(key)
        token = self._cipher().encrypt(body.value)
        at = self.registry.set_secret(name, key, token)
        self.go_live(name, f"the secret {key} of {name}")
        return SecretOut(name=key, set_at=at, declared=key in _declared(self.registry, name))

    def delete(self, name: str, key: str) -> None:
        """Remove a secret; the function reads None from its next request."""
        _check_function(name)
        _check_key(key)
        if not self.registry.delete_secret(name, key):
            raise GatewayError(404, "secret_not_found", f"{name} has no secret {key} set")
        self.go_live(name, f"the removal of the secret {key} of {name}")

    def rotate(self) -> RotateOut:
        """Encrypt every stored value again with the first key, so older keys can go."""
        cipher = self._cipher()
        try:
            count = self.registry.reencrypt_secrets(cipher.rotate)
        except InvalidToken:
            raise GatewayError(
                409,
                "secret_undecryptable",
                "a stored secret does not decrypt with this gateway's keys: add the key it "
                "was set with (after the first), or set that secret again; nothing was rotated",
            ) from None
        self.go_live("", "the rotated secrets")
        return RotateOut(rotated=count)


def _check_function(name: str) -> None:
    problem = check_function_name(name)
    if problem is not None:
        raise GatewayError(400, "invalid_function_name", problem)


def _check_key(key: str) -> None:
    problem = check_name(key)
    if problem is not None:
        raise GatewayError(400, "invalid_secret_name", problem)


def add_secrets_routes(
    app: FastAPI, registry: Registry, values: SecretValues, go_live: GoLive
) -> None:
    """Register the secrets routes on the admin app."""
    routes = _SecretsRoutes(registry, values, go_live)
    many, one = "/v1/functions/{name}/secrets", "/v1/functions/{name}/secrets/{key}"
    app.add_api_route(many, routes.list, methods=["GET"], response_model=SecretsOut)
    app.add_api_route(one, routes.put, methods=["PUT"], response_model=SecretOut)
    app.add_api_route(one, routes.delete, methods=["DELETE"], status_code=204)
    app.add_api_route(
        "/v1/secrets/rotate", routes.rotate, methods=["POST"], response_model=RotateOut
    )
