"""Named GPIO outputs drive their (mock) pins, refuse other names, and degrade without GPIO."""

import warnings

import gpiozero
import pytest

from agent.device import GpioOutputs
from agent.errors import NoGpioWarning

OUTPUTS = {"relay": 23, "fan": 24}


@pytest.fixture
def no_gpio(monkeypatch):
    """A machine where gpiozero finds no pin factory (as on a laptop or a Jetson)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "igris-test-no-such-factory")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)


def test_outputs_start_off_and_follow_writes_on_the_pins(factory):
    outputs = GpioOutputs(OUTPUTS, pin_factory=factory)
    try:
        assert outputs.names() == ("relay", "fan")
        assert outputs.problem is None
        relay, fan = factory.pin(23), factory.pin(24)
        assert (relay.function, relay.state, fan.state) == ("output", False, False)
        assert outputs.write("relay", True) is True
        assert (relay.state, fan.state) == (True, False)
        assert outputs.read("relay") is True and outputs.read("fan") is False
        assert outputs.write("relay", False) is False
        assert relay.state is False
    finally:
        outputs.close()


def test_an_output_on_before_the_agent_starts_is_turned_off(factory):
    factory.pin(23).drive_high()
    outputs = GpioOutputs(OUTPUTS, pin_factory=factory)
    try:
        assert factory.pin(23).state is False
        assert outputs.read("relay") is False
    finally:
        outputs.close()


def test_unknown_names_are_refused_with_the_outputs_there_are(factory):
    outputs = GpioOutputs(OUTPUTS, pin_factory=factory)
    try:
        with pytest.raises(ValueError, match=r"no GPIO output named 'led'; outputs: relay, fan"):
            outputs.write("led", True)
        with pytest.raises(ValueError, match="'led'"):
            outputs.read("led")
    finally:
        outputs.close()


def test_close_releases_the_pins_and_stops_driving(factory):
    outputs = GpioOutputs(OUTPUTS, pin_factory=factory)
    outputs.close()
    assert outputs.problem == "GPIO outputs are closed"
    with pytest.raises(ValueError, match="cannot be driven here: GPIO outputs are closed"):
        outputs.write("relay", True)
    GpioOutputs(OUTPUTS, pin_factory=factory).close()  # would raise GPIOPinInUse if held


def test_no_gpio_keeps_the_names_but_drives_nothing(no_gpio):
    with pytest.warns(NoGpioWarning, match="relay, fan") as caught:
        outputs = GpioOutputs(OUTPUTS)
    assert sum(issubclass(w.category, NoGpioWarning) for w in caught) == 1
    assert outputs.names() == ("relay", "fan")
    assert outputs.problem is not None and "cannot be driven" in outputs.problem
    with pytest.raises(ValueError, match="'relay' cannot be driven here"):
        outputs.write("relay", True)


def test_a_busy_pin_drops_all_outputs_and_releases_the_others(factory):
    holder = gpiozero.DigitalInputDevice(24, pin_factory=factory)
    try:
        with pytest.warns(NoGpioWarning):
            outputs = GpioOutputs(OUTPUTS, pin_factory=factory)
        with pytest.raises(ValueError, match="cannot be driven"):
            outputs.read("relay")
        gpiozero.DigitalOutputDevice(23, pin_factory=factory).close()  # relay was released
    finally:
        holder.close()


def test_profile_without_outputs_touches_no_gpio(no_gpio):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = GpioOutputs({})
    assert outputs.names() == ()
    assert outputs.problem is None
    outputs.close()
    assert outputs.problem is None
