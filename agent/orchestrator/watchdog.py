"""The event-loop watchdog: ping systemd only while the loop answers in time.

A ping sent from a task on the loop already stops when the loop is stuck for
good; this watchdog also notices a loop that is merely slow (a blocking call
that returned after seconds): each round it sleeps ``interval_s`` and
measures how late it woke. A late wake-up is logged, counted, and skips that
round's ping, so a loop that keeps stalling lets systemd's ``WatchdogSec``
run out and restart the agent::

    watchdog = LoopWatchdog(notifier.notify, interval_s=wd / 4, max_lag_s=wd / 4)
    await watchdog.start()
    watchdog.counters()   # {"pings": 12, "stalls": 1, "longest_stall_s": 2.04}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from agent.errors import ConfigInvalid

log = logging.getLogger(__name__)

PING = "WATCHDOG=1"


class Notifier(Protocol):
    """What sends sd_notify fields (``SystemdNotifier`` of the runtime)."""

    def notify(self, *fields: str) -> bool: ...


class LoopWatchdog:
    """Measures event-loop lag every ``interval_s``; pings through ``notify`` while it is low.

    ``notify`` is a callable taking sd_notify fields and returning whether
    they were sent (``SystemdNotifier.notify``), or an object with such a
    ``notify`` method. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        notify: Callable[..., bool] | Notifier,
        *,
        interval_s: float,
        max_lag_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        for name, value in (("interval_s", interval_s), ("max_lag_s", max_lag_s)):
            if not value > 0:
                raise ConfigInvalid(f"watchdog {name} must be above 0 seconds, got {value!r}")
        self._notify = notify if callable(notify) else notify.notify
        self.interval_s = interval_s
        self.max_lag_s = max_lag_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._pings = 0
        self._stalls = 0
        self._longest_stall_s = 0.0

    @property
    def healthy(self) -> bool:
        """False from a late wake-up until the next one on time."""
        return self._healthy

    def counters(self) -> dict[str, float]:
        """Pings sent, late wake-ups (stalls) and the longest lag seen, seconds."""
        return {"pings": self._pings, "stalls": self._stalls,
                "longest_stall_s": round(self._longest_stall_s, 3)}

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="igris.loop-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        self._ping()  # the loop is running this, so it answers now
        while True:
            due = self._clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            lag = self._clock() - due
            if lag > self.max_lag_s:
                self._healthy = False
                self._stalls += 1
                self._longest_stall_s = max(self._longest_stall_s, lag)
                log.warning("event loop blocked for %.3f s (limit %.3f s): no watchdog ping "
                            "this round", lag, self.max_lag_s)
                continue
            self._healthy = True
            self._ping()

    def _ping(self) -> None:
        if self._notify(PING):
            self._pings += 1
