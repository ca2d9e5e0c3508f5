"""`edgefn dev`: functions served from their source folders in the real sandbox.

The dev runner (`builder.build_dev_runner`, built once per SDK, contract and set
of requirements) imports a function's source when an instance starts, so an edit
is a snapshot and a deploy to a local gateway, not a build. Only `edgefn dev`'s
engine links the runner's capability: no gateway serves a dev runner.
"""

from ._local import LOOPBACK, SECRETS_FILE, DevError, kv_dir, parse_secret, write_policy
from ._logs import LogTail
from ._session import DevFunction, DevSession, prepare_runner

__all__ = [
    "LOOPBACK",
    "SECRETS_FILE",
    "DevError",
    "DevFunction",
    "DevSession",
    "LogTail",
    "kv_dir",
    "parse_secret",
    "prepare_runner",
    "write_policy",
]
