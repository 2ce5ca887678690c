"""The loop watchdog pings a real datagram socket (standing in for systemd) only on time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigInvalid
from agent.orchestrator.watchdog import LoopWatchdog
from agent.runtime.sdnotify import SystemdNotifier


class FakeSystemd:
    """A bound unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``.

    It reads every datagram as soon as the loop runs, as systemd does: the
    kernel queues only ``net.unix.max_dgram_qlen`` (often 10) unread ones
    before the sender blocks.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(path)})
        self.received: list[bytes] = []

    def listen(self) -> None:
        """Read on the running loop from now on (its end drops the reader)."""
        asyncio.get_running_loop().add_reader(self.sock, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append(self.sock.recv(256))


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


async def until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class ShiftedClock:
    """Monotonic time plus an offset the test moves, to fake a late wake-up."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_pings_arrive_while_the_loop_is_free(systemd, async_cleanup) -> None:
    systemd.listen()
    watchdog = LoopWatchdog(systemd.notifier.notify, interval_s=0.02, max_lag_s=0.2)
    await watchdog.start()
    async_cleanup.push(watchdog.stop)
    await asyncio.sleep(0.25)
    assert len(systemd.received) >= 5
    assert set(systemd.received) == {b"WATCHDOG=1"}
    assert watchdog.counters() == {"pings": len(systemd.received), "stalls": 0,
                                   "longest_stall_s": 0.0}
    assert watchdog.healthy


def block_the_loop(seconds: float) -> None:
    """What a blocking call on the loop does (the bug the watchdog is there to catch)."""
    time.sleep(seconds)


async def test_blocked_loop_gets_no_ping_for_that_round_and_pings_resume(
        systemd, async_cleanup) -> None:
    systemd.listen()
    watchdog = LoopWatchdog(systemd.notifier, interval_s=0.1, max_lag_s=0.2)  # the notifier
    await watchdog.start()
    async_cleanup.push(watchdog.stop)
    await until(lambda: len(systemd.received) >= 2)
    before = len(systemd.received)

    block_the_loop(0.6)  # the watchdog wakes about 0.5 s late
    await until(lambda: watchdog.counters()["stalls"] == 1)
    assert len(systemd.received) == before
    counters = watchdog.counters()
    assert counters["pings"] == before
    assert 0.3 < counters["longest_stall_s"] < 1.0
    assert not watchdog.healthy

    await until(lambda: len(systemd.received) > before)
    assert systemd.received[before:] == [b"WATCHDOG=1"]
    assert watchdog.healthy
    assert watchdog.counters()["stalls"] == 1


async def test_the_injected_clock_decides_what_is_late(systemd, async_cleanup, caplog) -> None:
    systemd.listen()
    clock = ShiftedClock()
    watchdog = LoopWatchdog(systemd.notifier.notify, interval_s=0.01, max_lag_s=1.0,
                            clock=clock)
    await watchdog.start()
    async_cleanup.push(watchdog.stop)
    await until(lambda: len(systemd.received) >= 2)

    clock.offset += 3.0  # the watchdog is asleep: it will find itself 3 s late
    await until(lambda: watchdog.counters()["stalls"] == 1)
    pings = len(systemd.received)
    assert watchdog.counters()["pings"] == pings
    assert not watchdog.healthy
    assert watchdog.counters()["longest_stall_s"] == pytest.approx(3.0, abs=0.2)
    assert "event loop blocked for 3.0" in caplog.text

    await until(lambda: len(systemd.received) > pings)
    assert watchdog.healthy
    assert watchdog.counters()["stalls"] == 1


async def test_stop_ends_the_pings(systemd) -> None:
    systemd.listen()
    watchdog = LoopWatchdog(systemd.notifier.notify, interval_s=0.01, max_lag_s=0.5)
    await watchdog.start()
    await until(lambda: len(systemd.received) >= 2)
    await watchdog.stop()
    await asyncio.sleep(0)  # a datagram sent before stop() is read now
    stopped_at = len(systemd.received)
    await asyncio.sleep(0.05)
    assert len(systemd.received) == stopped_at


async def test_pings_that_systemd_cannot_take_are_not_counted(tmp_path, async_cleanup) -> None:
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    watchdog = LoopWatchdog(notifier.notify, interval_s=0.01, max_lag_s=0.5)
    await watchdog.start()
    async_cleanup.push(watchdog.stop)
    await asyncio.sleep(0.05)
    assert watchdog.counters()["pings"] == 0
    assert watchdog.healthy


@pytest.mark.parametrize(("interval_s", "max_lag_s", "name"), [
    (0, 1.0, "interval_s"), (1.0, -1, "max_lag_s")])
def test_intervals_must_be_positive(interval_s, max_lag_s, name) -> None:
    with pytest.raises(ConfigInvalid, match=f"watchdog {name} must be above 0 seconds"):
        LoopWatchdog(lambda *_: True, interval_s=interval_s, max_lag_s=max_lag_s)


def test_a_listener_that_stops_reading_never_blocks_the_sender(systemd):
    # Nothing reads: once the kernel's queue is full, notify() says so at once.
    started = time.monotonic()
    sent = [systemd.notifier.notify("WATCHDOG=1") for _ in range(1000)]
    assert time.monotonic() - started < 2.0
    assert sent[0] is True and sent[-1] is False
