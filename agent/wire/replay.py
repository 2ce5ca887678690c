"""Remember recent ``(src, id)`` pairs so a replayed envelope is refused.

Envelopes outside the clock-skew window are refused anyway, so an id needs
remembering only for about twice that window; the cache is also capped in
size so a flood cannot grow it without bound. Portable.
"""

from agent.errors import EnvelopeRejected
from agent.wire.envelope import REPLAY


class ReplayGuard:
    """Refuses a ``(src, id)`` seen within ``horizon_ms``; holds at most ``capacity``."""

    def __init__(self, horizon_ms: int, capacity: int = 65536):
        self.horizon_ms = horizon_ms
        self.capacity = capacity
        self._seen = {}  # (src, id) -> time first seen, insertion ordered

    def __len__(self):
        return len(self._seen)

    def check(self, src: str, msg_id: str, now_ms: int) -> None:
        """Record ``(src, msg_id)``; raise ``EnvelopeRejected("replay")`` if seen."""
        self._expire(now_ms)
        key = (src, msg_id)
        if key in self._seen:
            raise EnvelopeRejected(REPLAY, "%s from %r seen before" % (msg_id, src))
        if len(self._seen) >= self.capacity:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = now_ms

    def _expire(self, now_ms):
        cutoff = now_ms - self.horizon_ms
        while self._seen:
            key = next(iter(self._seen))
            if self._seen[key] > cutoff:
                break
            del self._seen[key]
