"""Key-value stores: functions keep a little state in the stores their manifest
declares (`key_value_stores`), kept by a `KeyValueBackend` the gateway provides."""

from ._backend import KeyValueBackend, KVFailure, StoreQuota
from ._host import KV_IMPORT, KeyValueCapability

__all__ = ["KV_IMPORT", "KVFailure", "KeyValueBackend", "KeyValueCapability", "StoreQuota"]
