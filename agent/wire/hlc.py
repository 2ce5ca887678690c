"""Hybrid logical clock (Kulkarni et al., 2014) for ordering across devices.

A timestamp is ``[wall_ms, counter]``: close to wall time, yet it never goes
backwards and it moves past every timestamp the device has seen, so
last-writer-wins and "newer session" decisions hold even when clocks drift.
Portable: used by the lite agent.
"""

from agent.compat import wall_ms


class HybridClock:
    """Issue and merge HLC timestamps; ``now_ms`` is injectable for tests.

    >>> clock = HybridClock(lambda: 1000)
    >>> clock.now()
    [1000, 0]
    >>> clock.now()
    [1000, 1]
    """

    def __init__(self, now_ms=wall_ms):
        self._now_ms = now_ms
        self._wall = 0
        self._counter = 0

    def now(self) -> list:
        """A new timestamp for a local event or a message being sent."""
        physical = self._now_ms()
        if physical > self._wall:
            self._wall = physical
            self._counter = 0
        else:
            self._counter += 1
        return [self._wall, self._counter]

    def observe(self, ts) -> list:
        """Merge a received timestamp so later local ones order after it."""
        remote_wall, remote_counter = int(ts[0]), int(ts[1])
        physical = self._now_ms()
        if physical > self._wall and physical > remote_wall:
            self._wall = physical
            self._counter = 0
        elif remote_wall > self._wall:
            self._wall = remote_wall
            self._counter = remote_counter + 1
        elif remote_wall == self._wall:
            self._counter = max(self._counter, remote_counter) + 1
        else:
            self._counter += 1
        return [self._wall, self._counter]


def compare_ts(a, b) -> int:
    """-1, 0 or 1 as HLC timestamp ``a`` is before, equal to or after ``b``."""
    ka = (a[0], a[1])
    kb = (b[0], b[1])
    if ka < kb:
        return -1
    if ka > kb:
        return 1
    return 0
