"""Secrets at rest: the operator's key, and each worker's decrypted view.

Values are stored as Fernet tokens (AES-128-CBC + HMAC-SHA256, `cryptography`'s
`MultiFernet`), so the registry's database and its backups hold no plaintext;
names and set times are plaintext. The key comes from `EDGEFN_SECRETS_KEY` (one
or more keys, comma-separated) or a key file (one per line, mode 0600 or
stricter): the first key encrypts, every key decrypts, which is how a key is
rotated (README, "Secrets").
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from edgefn_runtime import EdgefnError

from .registry import SecretRecord

__all__ = [
    "Cipher",
    "NoSecretsKey",
    "SecretValues",
    "SecretsKeyError",
    "generate_key",
    "load_keys",
]

log = logging.getLogger("edgefn.secrets")

HOW_TO_GIVE_A_KEY = (
    "give the gateway a key: `edgefn secrets keygen > KEYFILE && chmod 600 KEYFILE`, then "
    "`edgefn serve --secrets-key-file KEYFILE` (or EDGEFN_SECRETS_KEY_FILE, or the key "
    "itself in EDGEFN_SECRETS_KEY)"
)


class SecretsKeyError(EdgefnError, ValueError):
    """The operator's secrets key is malformed or its file unusable (never quotes the key)."""

    code = "invalid_secrets_key"
    status = 400


class NoSecretsKey(EdgefnError):
    """The gateway has no secrets key, so it cannot store a secret."""

    code = "no_secrets_key"
    status = 503


def generate_key() -> str:
    """A new Fernet key (32 random bytes, URL-safe base64): what `secrets keygen` prints."""
    return Fernet.generate_key().decode()


def _parse(keys: Iterable[str], source: str) -> tuple[str, ...]:
    found = tuple(k.strip() for k in keys if k.strip())
    if not found:
        raise SecretsKeyError(f"{source} holds no key; {HOW_TO_GIVE_A_KEY}")
    for number, key in enumerate(found, 1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            # Never the key itself: this message goes to the terminal and the logs.
            raise SecretsKeyError(
                f"key {number} of {source} is not a Fernet key (32 bytes in URL-safe "
                f"base64, 44 characters); make one with `edgefn secrets keygen`"
            ) from None
    return found


def load_keys(value: str | None, key_file: Path | None) -> tuple[str, ...] | None:
    """The operator's keys, newest (encrypting) first: from `value`
    (EDGEFN_SECRETS_KEY, comma-separated) or `key_file` (one per line); None when
    neither is given. Raises SecretsKeyError for a malformed key, or a key file
    that is missing or readable by its group or others (as ssh refuses a key)."""
    if value is not None and key_file is not None:
        raise SecretsKeyError(
            "both EDGEFN_SECRETS_KEY and a secrets key file are set: give only one"
        )
    if value is not None:
        return _parse(value.split(","), "EDGEFN_SECRETS_KEY")
    if key_file is None:
        return None
    try:
        with Path(key_file).open() as file:
            mode = os.fstat(file.fileno()).st_mode
            text = file.read()
    except OSError as exc:
        raise SecretsKeyError(
            f"cannot read the secrets key file {key_file}: {exc.strerror}"
        ) from None
    if mode & 0o077:
        raise SecretsKeyError(
            f"the secrets key file {key_file} is open to its group or others (mode "
            f"{oct(stat.S_IMODE(mode))}): run chmod 600 {key_file}"
        )
    return _parse(text.splitlines(), str(key_file))


class Cipher:
    """Encrypts with the first key, decrypts with any of them."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def decrypt(self, token: bytes) -> str:
        """The plaintext; raises InvalidToken when no key opens it."""
        return self._fernet.decrypt(token).decode()

    def rotate(self, token: bytes) -> bytes:
        """`token` encrypted again with the first key (its original time kept)."""
        return self._fernet.rotate(token)


class SecretValues:
    """One worker's decrypted secrets: `update(rows)` after every registry change
    (decrypting only rows that changed), `get` per request, from any thread."""

    def __init__(self, cipher: Cipher | None) -> None:
        self.cipher = cipher
        # (function, name) -> (token it came from, plaintext or None)
        self._values: dict[tuple[str, str], tuple[bytes, str | None]] = {}
        self._lock = threading.Lock()

    def update(self, rows: Iterable[SecretRecord]) -> None:
        with self._lock:
            old = self._values
            new: dict[tuple[str, str], tuple[bytes, str | None]] = {}
            for row in rows:
                key = (row.function, row.name)
                kept = old.get(key)
                if kept is not None and kept[0] == row.value:
                    new[key] = kept
                    continue
                new[key] = (row.value, self._decrypt(row))
            self._values = new  # swapped whole: `get` never sees half an update

    def _decrypt(self, row: SecretRecord) -> str | None:
        if self.cipher is None:
            log.warning(
                "the secret %s of %s cannot be read: this gateway has no secrets key",
                row.name,
                row.function,
            )
            return None
        try:
            return self.cipher.decrypt(row.value)
        except (InvalidToken, UnicodeDecodeError):
            log.warning(
                "the secret %s of %s does not decrypt with this gateway's secrets keys "
                "(set it again, or add the key it was set with)",
                row.name,
                row.function,
            )
            return None

    def get(self, function: str, name: str) -> str | None:
        found = self._values.get((function, name))
        return None if found is None else found[1]
