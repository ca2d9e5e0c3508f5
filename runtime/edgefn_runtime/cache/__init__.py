"""The HTTP cache (RFC 9111) the gateway keeps its functions' responses in, and the
outbound capability the originals its functions fetch: one bounded store per
node, a memory tier per worker in front of a disk tier the node's workers share.

>>> from edgefn_runtime.cache import CacheConfig, HttpCache
>>> cache = HttpCache(CacheConfig(dir=tmp_path))
>>> cache.put("key", entry)
>>> cache.get("key") is not None
True
"""

from ._config import CacheConfig
from ._entry import Entry
from ._store import HttpCache, Purges

__all__ = ["CacheConfig", "Entry", "HttpCache", "Purges"]
