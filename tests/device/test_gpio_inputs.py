"""Named GPIO inputs follow their (mock) pins, and vanish politely without GPIO."""

import warnings

import gpiozero
import pytest

from agent.device import GpioInputs, GpioInputSpec
from agent.errors import NoGpioWarning

SPECS = {
    "power_save": GpioInputSpec(pin=17, pull_up=True),
    "door": GpioInputSpec(pin=27, pull_up=False),
}


@pytest.fixture
def no_gpio(monkeypatch):
    """A machine where gpiozero finds no pin factory (as on a laptop or a Jetson)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "igris-test-no-such-factory")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)


def test_reading_follows_the_pins_by_name(factory):
    inputs = GpioInputs(SPECS, pin_factory=factory)
    try:
        # Idle: the pull-up holds power_save high (inactive), door floats low.
        assert inputs.read() == {"power_save": False, "door": False}
        factory.pin(17).drive_low()  # the switch to ground closes
        factory.pin(27).drive_high()
        assert inputs.read() == {"power_save": True, "door": True}
        factory.pin(17).drive_high()
        assert inputs.read() == {"power_save": False, "door": True}
    finally:
        inputs.close()


def test_close_releases_the_pins(factory):
    GpioInputs(SPECS, pin_factory=factory).close()
    again = GpioInputs(SPECS, pin_factory=factory)  # would raise GPIOPinInUse if held
    try:
        assert set(again.read()) == {"power_save", "door"}
    finally:
        again.close()


def test_no_gpio_reads_empty_after_one_warning(no_gpio):
    with pytest.warns(NoGpioWarning, match="power_save, door") as caught:
        inputs = GpioInputs(SPECS)
    assert sum(issubclass(w.category, NoGpioWarning) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoGpioWarning)
        assert inputs.read() == {}
        assert inputs.read() == {}
    inputs.close()


def test_a_pin_that_cannot_be_opened_drops_all_inputs(factory):
    holder = gpiozero.DigitalOutputDevice(27, pin_factory=factory)
    try:
        with pytest.warns(NoGpioWarning):
            inputs = GpioInputs(SPECS, pin_factory=factory)
        assert inputs.read() == {}
        # The input that did open was released again, not leaked.
        gpiozero.DigitalInputDevice(17, pin_factory=factory).close()
    finally:
        holder.close()


def test_profile_without_inputs_touches_no_gpio(no_gpio):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs = GpioInputs({})
    assert inputs.read() == {}
