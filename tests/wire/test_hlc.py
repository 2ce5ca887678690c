"""Hybrid logical clock properties under random clocks, including clocks that go backwards."""

from __future__ import annotations

import doctest
import random

import agent.wire.hlc
from agent.wire import HybridClock, compare_ts


class ScriptedClock:
    """A physical clock the test moves by hand (forwards or backwards)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def jitter(rng: random.Random, ms: int) -> int:
    """Move a clock mostly forwards, sometimes backwards (NTP steps), never below 0."""
    step = rng.choice([0, 0, 1, 2, 5, 50, -1, -30, -2000, 10000])
    return max(0, ms + step)


def test_monotonic_under_random_clocks_going_backwards() -> None:
    rng = random.Random(20140101)
    for _ in range(50):
        physical = ScriptedClock(rng.randint(0, 10**12))
        clock = HybridClock(physical)
        last = [-1, -1]
        highest_seen = 0  # the largest physical reading or remote wall time so far
        for _ in range(400):
            physical.ms = jitter(rng, physical.ms)
            highest_seen = max(highest_seen, physical.ms)
            if rng.random() < 0.4:
                remote = [max(0, physical.ms + rng.randint(-5000, 5000)), rng.randint(0, 20)]
                ts = clock.observe(remote)
                highest_seen = max(highest_seen, remote[0])
                assert compare_ts(ts, remote) == 1, (ts, remote)
            else:
                ts = clock.now()
            assert compare_ts(ts, last) == 1, (last, ts)
            # the wall part is the largest time seen: never behind the physical clock,
            # never ahead of anything actually observed
            assert ts[0] == highest_seen >= physical.ms
            assert ts[1] >= 0
            last = ts


def test_causality_across_a_mesh_with_skewed_clocks() -> None:
    rng = random.Random(5)
    skews = [0, -3000, 2500, -40, 900]
    physical = [ScriptedClock(10**6 + s) for s in skews]
    clocks = [HybridClock(p) for p in physical]
    for _ in range(3000):
        for p in physical:
            p.ms = jitter(rng, p.ms)
        sender, receiver = rng.sample(range(len(clocks)), 2)
        sent = clocks[sender].now()
        got = clocks[receiver].observe(sent)
        assert compare_ts(got, sent) == 1  # receive happens after send
        assert compare_ts(clocks[sender].now(), sent) == 1


def test_counter_stays_small_when_clocks_advance() -> None:
    rng = random.Random(9)
    physical = ScriptedClock(1000)
    clock = HybridClock(physical)
    for _ in range(1000):
        physical.ms += rng.randint(1, 3)
        assert clock.now()[1] == 0


def test_a_stalled_clock_counts_up() -> None:
    clock = HybridClock(lambda: 42)
    assert [clock.now() for _ in range(4)] == [[42, 0], [42, 1], [42, 2], [42, 3]]


def test_compare_ts_is_the_tuple_order() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        a = [rng.randint(0, 5), rng.randint(0, 5)]
        b = [rng.randint(0, 5), rng.randint(0, 5)]
        want = (tuple(a) > tuple(b)) - (tuple(a) < tuple(b))
        assert compare_ts(a, b) == want
        assert compare_ts(b, a) == -want


def test_observe_takes_tuples_and_lists() -> None:
    clock = HybridClock(lambda: 10)
    assert clock.observe((20, 1)) == [20, 2]
    assert clock.observe([20, 5]) == [20, 6]


def test_default_clock_is_wall_time() -> None:
    ts = HybridClock().now()
    assert ts[0] > 1_600_000_000_000
    assert ts[1] == 0


def test_doctests() -> None:
    result = doctest.testmod(agent.wire.hlc)
    assert result.attempted > 0
    assert result.failed == 0
