"""Read thermal zones and power supplies from sysfs.

Sysfs is the cheapest way to watch a board: a temperature is one short
file read, with no subprocess and no library. It is also untidy: zones
vanish with a driver, some sensors answer EIO or ENODATA while their
device sleeps, and a few report nonsense. Nothing here raises for that;
an unreadable value is None (logged at debug) and health carries on with
what it has. The root is configurable so tests can build a fake tree::

    reader = SysfsReader("/sys")
    reader.thermal_zone("class/thermal/thermal_zone0")
    # ThermalReading(zone='class/thermal/thermal_zone0', type='cpu-thermal', celsius=47.2)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Disabled or broken sensors report values such as -274000 or 2147483647;
# anything outside this range is not a real board temperature.
_PLAUSIBLE_C = (-60.0, 200.0)


@dataclass(frozen=True, slots=True)
class ThermalReading:
    """One thermal zone: ``zone`` as configured, its ``type`` label and °C."""

    zone: str
    type: str | None
    celsius: float | None


@dataclass(frozen=True, slots=True)
class PowerSupplyReading:
    """One ``class/power_supply/<name>`` entry (``capacity`` in percent).

    ``status`` is the kernel's word: Charging, Discharging, Full, Not
    charging or Unknown.
    """

    name: str
    type: str | None
    capacity: float | None
    status: str | None


class SysfsReader:
    """Reads thermal zones and power supplies below ``root`` (default ``/sys``)."""

    __slots__ = ("_root",)

    def __init__(self, root: str | os.PathLike[str] = "/sys"):
        self._root = Path(root)

    def find_zones(self, patterns: Iterable[str]) -> tuple[str, ...]:
        """Expand glob patterns (``class/thermal/thermal_zone*``) into the zones present.

        Plain paths are kept even when absent, so a missing zone shows up as
        an unreadable reading rather than disappearing silently.
        """
        zones: list[str] = []
        for pattern in patterns:
            if any(ch in pattern for ch in "*?["):
                found = sorted(self._root.glob(pattern), key=_natural_key)
                zones += [p.relative_to(self._root).as_posix() for p in found]
            else:
                zones.append(pattern)
        return tuple(dict.fromkeys(zones))

    def thermal_zone(self, zone: str) -> ThermalReading:
        """Read one zone's ``type`` and ``temp`` (millidegrees Celsius)."""
        base = self._root / zone
        millideg = _read_number(base / "temp")
        celsius = None if millideg is None else millideg / 1000.0
        if celsius is not None and not _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
            log.debug("ignoring implausible temperature %.1f C in %s", celsius, base)
            celsius = None
        return ThermalReading(zone=zone, type=_read_text(base / "type"), celsius=celsius)

    def thermal_zones(self, zones: Iterable[str]) -> tuple[ThermalReading, ...]:
        return tuple(self.thermal_zone(zone) for zone in zones)

    def power_supply(self, name: str) -> PowerSupplyReading | None:
        """Read ``class/power_supply/<name>``; None when there is no such supply."""
        base = self._root / "class" / "power_supply" / name
        if not base.is_dir():
            log.debug("no power supply at %s", base)
            return None
        capacity = _read_number(base / "capacity")
        if capacity is not None and not 0 <= capacity <= 100:
            log.debug("ignoring capacity %s outside 0-100 in %s", capacity, base)
            capacity = None
        return PowerSupplyReading(
            name=name,
            type=_read_text(base / "type"),
            capacity=capacity,
            status=_read_text(base / "status"),
        )


def _read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, ValueError) as exc:
        # OSError: absent, or a sensor answering EIO/ENODATA; ValueError: garbage bytes.
        log.debug("cannot read %s: %s", path, exc)
        return None
    return text or None


def _read_number(path: Path) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return float(int(text))
    except ValueError:
        log.debug("not a whole number in %s: %r", path, text[:40])
        return None


def _natural_key(path: Path) -> tuple[str, str, int]:
    """Sort thermal_zone2 before thermal_zone10."""
    stem = path.name.rstrip("0123456789")
    number = path.name[len(stem) :]
    return (str(path.parent), stem, int(number) if number else -1)
