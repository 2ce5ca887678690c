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
        self._seen = {}  # (src, id) -> time first seen
        # Keys in the order first seen. MicroPython's dict does not keep insertion
        # order, so the order lives in a list; _order[:_head] are already forgotten.
        self._order = []
        self._head = 0

    def __len__(self):
        return len(self._seen)

    def check(self, src: str, msg_id: str, now_ms: int) -> None:
        """Record ``(src, msg_id)``; raise ``EnvelopeRejected("replay")`` if seen."""
        self._expire(now_ms)
        key = (src, msg_id)
        if key in self._seen:
            raise EnvelopeRejected(REPLAY, "%s from %r seen before" % (msg_id, src))
        if len(self._seen) >= self.capacity:
            self._forget_oldest()
        self._seen[key] = now_ms
        self._order.append(key)

    def _forget_oldest(self):
        del self._seen[self._order[self._head]]
        self._head += 1
        if self._head >= 64 and self._head * 2 >= len(self._order):
            self._order = self._order[self._head:]
            self._head = 0

    def _expire(self, now_ms):
        cutoff = now_ms - self.horizon_ms
        while self._head < len(self._order):
            if self._seen[self._order[self._head]] > cutoff:
                break
            self._forget_oldest()
