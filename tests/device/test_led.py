"""The health LED: each state's rhythm on a (mock) pin, and a virtual LED without GPIO."""

import asyncio
import contextlib
import time
import warnings

import gpiozero
import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from agent.device import PATTERNS, HealthLed, LedState, led_state_for
from agent.errors import NoGpioWarning

PIN = 18
TICK = 0.002  # seconds per frame: whole loops of every pattern in a few ms


class RecordingPin(MockPin):
    """A mock pin that keeps every level written to it, repeats included.

    MockPin's own history keeps only changes; the write log shows the frames
    themselves, so the rhythm can be checked without timing anything.
    """

    def __init__(self, factory, info):
        self.writes = []
        super().__init__(factory, info)

    def _set_state(self, value):
        self.writes.append(int(value))
        super()._set_state(value)


@pytest.fixture
def factory():
    mock = MockFactory(pin_class=RecordingPin)
    yield mock
    mock.close()


@pytest.fixture
def no_gpio(monkeypatch):
    """A machine where gpiozero finds no pin factory (as on a laptop or a Jetson)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "igris-test-no-such-factory")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)


def writes_after(pin, mark, count, timeout=2.0):
    """The next ``count`` levels written to ``pin`` after write number ``mark``."""
    deadline = time.monotonic() + timeout
    while len(pin.writes) < mark + count:
        assert time.monotonic() < deadline, f"only {len(pin.writes) - mark} writes"
        time.sleep(TICK)
    return pin.writes[mark : mark + count]


def record(led, pin, state, count):
    """Show a blinking ``state`` and return its first ``count`` writes.

    It starts from solid HEALTHY, where no pattern thread runs, so no frame
    of the previous pattern can land in the record.
    """
    led.show(LedState.HEALTHY)
    mark = len(pin.writes)
    led.show(state)
    return writes_after(pin, mark, count)


def loops_of(frames, count):
    return [frames[i % len(frames)] for i in range(count)]


@pytest.mark.parametrize(
    ("booting", "connected", "health", "error", "expected"),
    [
        (True, None, "healthy", True, LedState.ERROR),
        (True, False, "degraded", False, LedState.BOOTING),
        (False, False, "degraded", False, LedState.OFFLINE),
        (False, None, "degraded", False, LedState.DEGRADED),
        (False, True, "degraded", False, LedState.DEGRADED),
        (False, None, "healthy", False, LedState.HEALTHY),
        (False, True, "healthy", False, LedState.HEALTHY),
    ],
)
def test_led_state_for_picks_by_priority(booting, connected, health, error, expected):
    assert led_state_for(booting, connected, health, error) is expected


def test_every_state_has_its_own_pattern():
    assert set(PATTERNS) == set(LedState)
    assert len(set(PATTERNS.values())) == len(LedState)
    assert PATTERNS[LedState.HEALTHY] == (1,)
    for state, frames in PATTERNS.items():
        if state is not LedState.HEALTHY:
            assert set(frames) == {0, 1}, f"{state} does not blink"


def test_starts_blinking_booting(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    try:
        assert led.state is LedState.BOOTING and not led.virtual
        pin = factory.pin(PIN)
        # The first write is gpiozero's "start off"; then the fast even blink.
        assert writes_after(pin, 1, 12) == [1, 0] * 6
    finally:
        led.close()


def test_healthy_is_solid_on_with_no_blinking(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    pin = factory.pin(PIN)
    try:
        led.show(LedState.HEALTHY)
        assert pin.state is True
        mark = len(pin.writes)
        time.sleep(TICK * 20)
        assert pin.writes[mark:] == []
        assert pin.state is True
    finally:
        led.close()


@pytest.mark.parametrize("state", [LedState.DEGRADED, LedState.OFFLINE, LedState.ERROR])
def test_blinking_states_play_their_frames_in_order(factory, state):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    pin = factory.pin(PIN)
    try:
        frames = PATTERNS[state]
        count = len(frames) + 5  # one whole loop and the start of the next
        assert record(led, pin, state, count) == loops_of(frames, count)
        assert led.state is state
    finally:
        led.close()


def test_states_look_different_on_the_pin(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    pin = factory.pin(PIN)
    try:
        # HEALTHY is solid (see above); every other state blinks its own way.
        blinking = [s for s in LedState if s is not LedState.HEALTHY]
        seen = {tuple(record(led, pin, state, 40)) for state in blinking}
        assert len(seen) == len(blinking)
        assert all(set(frames) == {0, 1} for frames in seen)
    finally:
        led.close()


def test_active_low_led_inverts_the_pin(factory):
    led = HealthLed(PIN, active_high=False, pin_factory=factory, tick_s=TICK)
    pin = factory.pin(PIN)
    try:
        assert record(led, pin, LedState.DEGRADED, 10) == [
            1 - f for f in PATTERNS[LedState.DEGRADED]
        ]
        led.show(LedState.HEALTHY)
        assert pin.state is False  # lit, for an LED wired to 3V3
    finally:
        led.close()


def test_showing_the_same_state_again_leaves_the_pin_alone(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    pin = factory.pin(PIN)
    try:
        led.show(LedState.HEALTHY)
        mark = len(pin.writes)
        led.show(LedState.HEALTHY)
        led.show("healthy")
        time.sleep(TICK * 10)
        assert pin.writes[mark:] == []
    finally:
        led.close()


def test_close_turns_off_and_releases_the_pin_but_keeps_the_state(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    led.show(LedState.HEALTHY)
    led.close()
    pin = factory.pin(PIN)
    assert led.virtual
    assert pin.function == "input"
    led.show(LedState.DEGRADED)
    assert led.state is LedState.DEGRADED
    again = HealthLed(PIN, pin_factory=factory, tick_s=TICK)  # pin is free again
    again.close()


def test_no_pin_means_a_virtual_led_that_still_tracks_state():
    with pytest.warns(NoGpioWarning, match="virtual"):
        led = HealthLed(None)
    assert led.virtual and led.state is LedState.BOOTING
    led.show(LedState.OFFLINE)
    assert led.state is LedState.OFFLINE
    led.close()
    assert led.state is LedState.OFFLINE


def test_no_pin_factory_means_a_virtual_led_with_one_warning(no_gpio):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        led = HealthLed(PIN)
    ours = [w for w in caught if issubclass(w.category, NoGpioWarning)]
    assert len(ours) == 1 and "GPIO18" in str(ours[0].message)
    assert led.virtual
    led.show(LedState.ERROR)
    assert led.state is LedState.ERROR


def test_cycle_shows_each_state_in_turn_then_restores(factory):
    led = HealthLed(PIN, pin_factory=factory, tick_s=TICK)
    led.show(LedState.HEALTHY)

    async def run():
        shown = []
        async for state in led.cycle(dwell_s=0):
            shown.append((state, led.state))
        return shown

    try:
        shown = asyncio.run(run())
        assert [s for s, _ in shown] == list(LedState)
        assert all(yielded is current for yielded, current in shown)
        assert led.state is LedState.HEALTHY
    finally:
        led.close()


def test_cycle_stopped_early_still_restores():
    with pytest.warns(NoGpioWarning):
        led = HealthLed(None)
    led.show(LedState.DEGRADED)

    async def run():
        async with contextlib.aclosing(led.cycle(dwell_s=0)) as states:
            async for state in states:
                if state is LedState.HEALTHY:
                    assert led.state is LedState.HEALTHY
                    break

    asyncio.run(run())
    assert led.state is LedState.DEGRADED
