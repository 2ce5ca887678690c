"""The device layer: what board this is, how it is, and the light that says so.

Profiles describe the hardware (:func:`load_profile`); the health monitor
samples it (:class:`HealthMonitor`); the health LED shows the result
(:class:`HealthLed`, :func:`led_state_for`); commands drive the profile's
named outputs (:class:`GpioOutputs`).
"""

from agent.device.gpio_inputs import GpioInputs
from agent.device.gpio_outputs import GpioOutputs
from agent.device.health import BatteryReading, HealthMonitor, HealthReport, HealthStatus
from agent.device.led import PATTERNS, HealthLed, LedState, led_state_for
from agent.device.profile import (
    GpioInputSpec,
    GpioSpec,
    LedSpec,
    Limits,
    PowerSpec,
    TargetProfile,
    ThermalSpec,
    available_profiles,
    load_profile,
    load_profile_file,
)
from agent.device.sysfs import PowerSupplyReading, SysfsReader, ThermalReading
from agent.device.throttle import ThrottleFlags, read_throttled

__all__ = [
    "PATTERNS",
    "BatteryReading",
    "GpioInputSpec",
    "GpioInputs",
    "GpioOutputs",
    "GpioSpec",
    "HealthLed",
    "HealthMonitor",
    "HealthReport",
    "HealthStatus",
    "LedSpec",
    "LedState",
    "Limits",
    "PowerSpec",
    "PowerSupplyReading",
    "SysfsReader",
    "TargetProfile",
    "ThermalReading",
    "ThermalSpec",
    "ThrottleFlags",
    "available_profiles",
    "led_state_for",
    "load_profile",
    "load_profile_file",
    "read_throttled",
]
