"""Memory: encrypted JSON documents in named pools, with expiry (see docs/memory.md)."""

from agent.memory.keys import KEY_BYTES, PoolKey, PoolKeys
from agent.memory.sharing import PoolMemberUnknown, PoolShare, PoolSharing
from agent.memory.store import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Document,
    Listing,
    MemoryStore,
    PoolInfo,
)

__all__ = [
    "KEY_BYTES", "MAX_KEY_BYTES", "MAX_VALUE_BYTES", "Document", "Listing", "MemoryStore",
    "PoolInfo", "PoolKey", "PoolKeys", "PoolMemberUnknown", "PoolShare", "PoolSharing",
]
