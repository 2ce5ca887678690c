"""Named GPIO outputs from the target profile, the only pins commands may drive.

A profile lists its outputs by name (``relay = 23``); a ``gpio.write``
command names one and never a pin number, so a caller cannot reach a pin the
profile does not hand out (the health LED's, an input's, the camera's)::

    outputs = GpioOutputs(profile.gpio.outputs, pin_factory=factory)
    outputs.write("relay", True)
    outputs.read("relay")   # True

Every output starts off when the agent starts: an agent that has just come up
does not know why a relay was on, so it does not keep it on. Like
:class:`~agent.device.GpioInputs`, the outputs open together or not at all
(one NoGpioWarning); they still list their names, so a command can say the
output exists but cannot be driven here, rather than that it is unknown.
gpiozero is imported only when the profile has outputs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import DigitalOutputDevice, Factory

from agent.errors import NoGpioWarning

log = logging.getLogger(__name__)


class GpioOutputs:
    """The profile's named outputs (active high), driven through gpiozero.

    :meth:`read` and :meth:`write` raise ValueError, naming the outputs there
    are, for a name the profile does not list or for an output that cannot be
    driven here (see :attr:`problem`).
    """

    __slots__ = ("_devices", "_names", "_problem")

    def __init__(self, outputs: Mapping[str, int], *, pin_factory: Factory | None = None):
        self._names = tuple(outputs)
        self._devices: dict[str, DigitalOutputDevice] = {}
        self._problem: str | None = None
        try:
            if outputs:
                from gpiozero import DigitalOutputDevice
            for name, pin in outputs.items():
                self._devices[name] = DigitalOutputDevice(
                    pin, initial_value=False, pin_factory=pin_factory
                )
        # As for the inputs: whatever the pin factory raises must not stop the agent.
        except Exception as exc:
            self.close()
            self._problem = f"GPIO outputs {', '.join(self._names)} cannot be driven: {exc}"
            log.debug("GPIO outputs unavailable", exc_info=True)
            warnings.warn(NoGpioWarning(self._problem), stacklevel=2)

    def names(self) -> tuple[str, ...]:
        """Every output the profile lists, in its order (drivable or not)."""
        return self._names

    @property
    def problem(self) -> str | None:
        """Why the outputs cannot be driven (no GPIO, a busy pin, closed), else None."""
        return self._problem

    def read(self, name: str) -> bool:
        """Whether output ``name`` is on."""
        return bool(self._device(name).value)

    def write(self, name: str, on: bool) -> bool:
        """Turn output ``name`` on or off; returns the level read back."""
        device = self._device(name)
        device.value = bool(on)
        return bool(device.value)

    def close(self) -> None:
        """Release the pins (an output is driven no more once released)."""
        for device in self._devices.values():
            device.close()
        self._devices.clear()
        if self._names and self._problem is None:
            self._problem = "GPIO outputs are closed"

    def _device(self, name: str) -> DigitalOutputDevice:
        if name not in self._names:
            known = ", ".join(self._names) or "none (the profile lists no [gpio.outputs])"
            raise ValueError(f"no GPIO output named {name!r}; outputs: {known}")
        device = self._devices.get(name)
        if device is None:
            raise ValueError(f"GPIO output {name!r} cannot be driven here: {self._problem}")
        return device
