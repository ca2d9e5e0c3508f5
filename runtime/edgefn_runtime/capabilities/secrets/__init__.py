"""Secrets: values the operator sets for the names a function's manifest
declares (`secrets`), read by the guest through `edgefn:http/secrets`."""

from ._host import SECRETS_IMPORT, SecretsCapability, SecretSource

__all__ = ["SECRETS_IMPORT", "SecretSource", "SecretsCapability"]
