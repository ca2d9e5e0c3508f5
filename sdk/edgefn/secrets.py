"""Secrets: values the operator sets, never in the function's folder.

>>> from edgefn import secrets
>>> token = secrets.get("ORIGIN_TOKEN")  # str, or None while the operator has not set it

The manifest declares the names (`secrets = ["ORIGIN_TOKEN"]` in edgefn.toml);
the operator sets the values (`edgefn secrets set FUNCTION ORIGIN_TOKEN`).
They are not in `os.environ`. Natively, `TestClient(app, secrets={...})` gives them.
"""

from __future__ import annotations

from typing import ClassVar, NoReturn, Protocol

from edgefn_contract.secrets import STATUSES, check_name

from ._exceptions import HTTPError

__all__ = ["Backend", "SecretNotDeclared", "SecretsError", "get", "raise_failure", "use_backend"]


class SecretsError(HTTPError):
    """Reading a secret failed: uncaught, a 500."""

    kind: ClassVar[str] = ""

    def __init__(self, message: str) -> None:
        status, code = STATUSES.get(self.kind, (500, "secrets_unavailable"))
        super().__init__(status, message, code=code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class SecretNotDeclared(SecretsError):
    """The manifest's `secrets` does not declare the name."""

    kind = "not_declared"


def raise_failure(kind: str, message: str) -> NoReturn:
    """Raise the SDK exception for a failure `kind` reported by the host."""
    raise (SecretNotDeclared if kind == "not_declared" else SecretsError)(message)


class Backend(Protocol):
    """Gives secrets: the host capability in wasm, the test's mapping natively."""

    def get(self, name: str) -> str | None: ...


_backend: Backend | None = None


def use_backend(backend: Backend | None) -> None:
    """Set by the guest glue or `edgefn.testing`; functions never call this."""
    global _backend
    _backend = backend


def get(name: str) -> str | None:
    """The value of the secret `name`, which the manifest's `secrets` must
    declare (`SecretNotDeclared` otherwise); None while the operator has not set it."""
    problem = check_name(name)
    if problem is not None:
        raise (ValueError if isinstance(name, str) else TypeError)(f"secrets: {problem}")
    if _backend is None:
        raise RuntimeError("edgefn.secrets needs the edgefn runtime or edgefn.testing")
    return _backend.get(name)
