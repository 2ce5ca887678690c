"""Named GPIO inputs from the target profile, read through gpiozero.

A profile names its inputs (``power_save = { pin = 17, pull_up = true }``)
so the rest of the agent asks for "power_save", never for pin 17::

    inputs = GpioInputs(profile.gpio.inputs, pin_factory=factory)
    inputs.read()   # {"power_save": True}

A value is True when the input is *active*: pulled low for a ``pull_up``
input (a switch to ground closed), high otherwise. The pin factory is
passed in, never set globally, so tests drive real gpiozero devices on
``MockFactory`` pins; None lets gpiozero pick the board's own factory.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import DigitalInputDevice, Factory

from agent.device.profile import GpioInputSpec
from agent.errors import NoGpioWarning

log = logging.getLogger(__name__)


class GpioInputs:
    """The profile's named inputs; empty (with one NoGpioWarning) without GPIO.

    The inputs work together or not at all: a board that can open some of
    its pins but not others is miswired or misconfigured, and half a set of
    inputs would mislead whoever reads them.
    """

    __slots__ = ("_devices",)

    def __init__(self, specs: Mapping[str, GpioInputSpec], pin_factory: Factory | None = None):
        self._devices: dict[str, DigitalInputDevice] = {}
        try:
            if specs:
                from gpiozero import DigitalInputDevice
            for name, spec in specs.items():
                self._devices[name] = DigitalInputDevice(
                    spec.pin, pull_up=spec.pull_up, pin_factory=pin_factory
                )
        # gpiozero's factories raise their own errors (lgpio.error, OSError on
        # /dev/gpiomem, BadPinFactory, ...); none of them should stop the agent.
        except Exception as exc:
            self.close()
            log.debug("GPIO inputs unavailable", exc_info=True)
            warnings.warn(
                NoGpioWarning(f"GPIO inputs {', '.join(specs)} are not read: {exc}"),
                stacklevel=2,
            )

    def read(self) -> dict[str, bool]:
        """Each input's current value by name (empty without GPIO)."""
        return {name: bool(device.is_active) for name, device in self._devices.items()}

    def close(self) -> None:
        """Release the pins."""
        for device in self._devices.values():
            device.close()
        self._devices.clear()
