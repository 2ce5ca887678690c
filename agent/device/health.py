"""Device health: one cheap sample of everything that says how the board is.

The sample feeds the retained ``state`` message, the router's choice of
where AI work runs, the health LED and ``igris status``. It reads a few
sysfs files, asks psutil (never blocking: CPU load is measured between
samples) and, on a Pi, runs ``vcgencmd`` once, so it is cheap enough to
take every few seconds on a Pi Zero::

    monitor = HealthMonitor(load_profile("rpi4"), pin_factory=factory)
    report = await monitor.sample()
    report.status    # "degraded"
    report.reasons   # ("cpu-thermal at 81.0 C, over the 75 C warning limit",)
    monitor.close()

``status`` is "degraded" when something needs a person or should steer
work elsewhere, and each of ``reasons`` says what in plain words.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import psutil

if TYPE_CHECKING:
    from gpiozero import Factory

from agent.device.gpio_inputs import GpioInputs
from agent.device.profile import TargetProfile
from agent.device.sysfs import SysfsReader, ThermalReading
from agent.device.throttle import GET_THROTTLED, ThrottleFlags, read_throttled

log = logging.getLogger(__name__)

HealthStatus = Literal["healthy", "degraded"]

_MB = 1024 * 1024
# psutil counts CPU time in 10 ms ticks: over a shorter window than this the
# load reads as 0 % or 100 %, which would mislead the router at start-up.
_MIN_CPU_WINDOW_S = 0.5
_PLUGGED_BY_STATUS = {"Charging": True, "Full": True, "Not charging": True, "Discharging": False}
_THROTTLE_REASONS = {
    "under_voltage": "under-voltage now: the power supply is too weak",
    "freq_capped": "CPU frequency capped by the firmware",
    "throttled": "CPU throttled by the firmware",
    "soft_temp_limit": "soft temperature limit active",
}


@dataclass(frozen=True, slots=True)
class BatteryReading:
    """Charge in percent and whether external power is connected (None: unknown).

    ``source`` is the profile's ``power.battery`` (``psutil`` or ``sysfs:<name>``).
    """

    percent: float | None
    plugged: bool | None
    source: str


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One health sample; :meth:`to_dict` gives its JSON form.

    ``cpu_percent`` is the system's load since the monitor's previous
    measurement, None until that spans half a second. Memory figures are in
    MB (``memory_used_mb`` counts what is not available to new programs),
    temperatures in °C by zone type.
    """

    taken_at: float
    status: HealthStatus
    reasons: tuple[str, ...]
    cpu_percent: float | None
    memory_used_mb: float
    memory_total_mb: float
    memory_percent: float
    process_rss_mb: float
    load_average: tuple[float, float, float]
    temperatures_c: Mapping[str, float] = field(hash=False)
    max_temperature_c: float | None
    throttle: ThrottleFlags | None
    battery: BatteryReading | None
    gpio: Mapping[str, bool] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "status": self.status,
            "reasons": list(self.reasons),
            "cpu_percent": self.cpu_percent,
            "memory_used_mb": self.memory_used_mb,
            "memory_total_mb": self.memory_total_mb,
            "memory_percent": self.memory_percent,
            "process_rss_mb": self.process_rss_mb,
            "load_average": list(self.load_average),
            "temperatures_c": dict(self.temperatures_c),
            "max_temperature_c": self.max_temperature_c,
            "throttle": None if self.throttle is None else self.throttle.to_dict(),
            "battery": None
            if self.battery is None
            else {
                "percent": self.battery.percent,
                "plugged": self.battery.plugged,
                "source": self.battery.source,
            },
            "gpio": dict(self.gpio),
        }


class HealthMonitor:
    """Samples the board's health as its :class:`TargetProfile` describes it.

    ``sysfs_root`` and ``pin_factory`` let tests use a fake sysfs tree and
    gpiozero's MockFactory; ``clock`` stamps each report (wall seconds);
    ``throttle_command`` is what runs for ``vcgencmd get_throttled`` on
    profiles that have it. Call :meth:`close` to release the GPIO inputs.
    """

    __slots__ = (
        "_clock",
        "_cpu_percent",
        "_cpu_since",
        "_inputs",
        "_process",
        "_profile",
        "_sysfs",
        "_throttle_command",
        "_zones",
    )

    def __init__(
        self,
        profile: TargetProfile,
        *,
        sysfs_root: str | os.PathLike[str] = "/sys",
        pin_factory: Factory | None = None,
        clock: Callable[[], float] = time.time,
        throttle_command: Sequence[str] = GET_THROTTLED,
    ):
        self._profile = profile
        self._clock = clock
        self._throttle_command = tuple(throttle_command)
        self._sysfs = SysfsReader(sysfs_root)
        # Thermal zones come with their drivers at boot; expanding the globs
        # once keeps each sample to plain file reads.
        self._zones = self._sysfs.find_zones(profile.thermal.zones)
        self._inputs = GpioInputs(profile.gpio.inputs, pin_factory)
        self._process = psutil.Process()
        # psutil measures CPU load between calls; this first one sets the baseline.
        psutil.cpu_percent(interval=None)
        self._cpu_since = time.monotonic()
        self._cpu_percent: float | None = None

    async def sample(self) -> HealthReport:
        """Take one sample (the only await is vcgencmd, on profiles that have it)."""
        profile = self._profile
        throttle = None
        if profile.has_vcgencmd:
            throttle = await read_throttled(self._throttle_command)
        temperatures = _label_temperatures(self._sysfs.thermal_zones(self._zones))
        hottest = max(temperatures.items(), key=lambda item: item[1], default=None)
        battery = self._read_battery()
        memory = psutil.virtual_memory()
        rss_mb = round(self._process.memory_info().rss / _MB, 1)
        load1, load5, load15 = psutil.getloadavg()

        reasons = assess(
            profile, hottest=hottest, throttle=throttle, battery=battery, rss_mb=rss_mb
        )
        return HealthReport(
            taken_at=self._clock(),
            status="degraded" if reasons else "healthy",
            reasons=reasons,
            cpu_percent=self._measure_cpu(),
            memory_used_mb=round((memory.total - memory.available) / _MB, 1),
            memory_total_mb=round(memory.total / _MB, 1),
            memory_percent=memory.percent,
            process_rss_mb=rss_mb,
            load_average=(round(load1, 2), round(load5, 2), round(load15, 2)),
            temperatures_c=MappingProxyType(temperatures),
            max_temperature_c=None if hottest is None else hottest[1],
            throttle=throttle,
            battery=battery,
            gpio=MappingProxyType(self._inputs.read()),
        )

    def read_inputs(self) -> dict[str, bool]:
        """The profile's GPIO inputs now (those that can be read here)."""
        return self._inputs.read()

    def close(self) -> None:
        """Release the GPIO inputs."""
        self._inputs.close()

    def _measure_cpu(self) -> float | None:
        """System CPU percent since the last measurement at least a window ago."""
        now = time.monotonic()
        if now - self._cpu_since >= _MIN_CPU_WINDOW_S:
            self._cpu_percent = psutil.cpu_percent(interval=None)
            self._cpu_since = now
        return self._cpu_percent

    def _read_battery(self) -> BatteryReading | None:
        source = self._profile.power.battery
        if source == "none":
            return None
        if source == "psutil":
            found = psutil.sensors_battery()
            if found is None:
                log.debug("psutil finds no battery")
                return None
            return BatteryReading(round(found.percent, 1), found.power_plugged, source)
        supply = self._sysfs.power_supply(source.removeprefix("sysfs:"))
        if supply is None:
            return BatteryReading(None, None, source)
        plugged = _PLUGGED_BY_STATUS.get(supply.status or "")
        return BatteryReading(supply.capacity, plugged, source)


def assess(
    profile: TargetProfile,
    *,
    hottest: tuple[str, float] | None,
    throttle: ThrottleFlags | None,
    battery: BatteryReading | None,
    rss_mb: float,
) -> tuple[str, ...]:
    """The reasons the device is degraded, in plain words (empty: healthy).

    Historic throttling ("has occurred" bits) is reported in the flags but
    is no reason: it is over. A low battery counts only when nothing is
    known to be charging it.
    """
    reasons: list[str] = []
    thermal = profile.thermal
    if hottest is not None:
        zone, celsius = hottest
        if celsius >= thermal.critical_c:
            reasons.append(
                f"{zone} at {celsius:.1f} C, at or over the {thermal.critical_c:g} C critical limit"
            )
        elif celsius >= thermal.warn_c:
            reasons.append(
                f"{zone} at {celsius:.1f} C, over the {thermal.warn_c:g} C warning limit"
            )
    if throttle is not None:
        reasons += [_THROTTLE_REASONS[name] for name in throttle.active()]
    low = profile.power.low_battery_percent
    if (
        battery is not None
        and battery.percent is not None
        and battery.percent < low
        and battery.plugged is not True
    ):
        reasons.append(f"battery at {battery.percent:.0f}% and not charging (low is {low:g}%)")
    if rss_mb > profile.limits.memory_mb:
        reasons.append(
            f"agent memory {rss_mb:.0f} MB, over its {profile.limits.memory_mb} MB limit"
        )
    return tuple(reasons)


def _label_temperatures(readings: Sequence[ThermalReading]) -> dict[str, float]:
    """°C by zone type ("cpu-thermal"); the zone's directory name when the
    type is unreadable or already taken (x86 often has two "acpitz")."""
    labelled: dict[str, float] = {}
    for reading in readings:
        if reading.celsius is None:
            continue
        label = reading.type
        if label is None or label in labelled:
            label = PurePosixPath(reading.zone).name
        labelled[label] = round(reading.celsius, 1)
    return labelled
