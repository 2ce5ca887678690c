"""A wall clock in milliseconds that a test sets by hand (``clock.ms += 1000``)."""

from __future__ import annotations


class Clock:
    """Callable like ``agent.compat.wall_ms``; returns ``ms``, which the test moves."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms
