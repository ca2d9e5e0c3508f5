"""Key-value stores: functions keep a little state in the stores their manifest
declares (`key_value_stores`), kept by a `KeyValueBackend` the gateway provides."""

from ._backend import KeyValueBackend, KVFailure, StoreQuota

__all__ = ["KVFailure", "KeyValueBackend", "StoreQuota"]
