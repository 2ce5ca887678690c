"""Hardware stand-ins for the device tests: a fake sysfs tree and mock GPIO."""

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory


class FakeSysfs:
    """Writes the few sysfs files Igris reads, below ``root``."""

    def __init__(self, root: Path):
        self.root = root

    def zone(self, number, kind="cpu-thermal", temp="45000"):
        """A thermal zone; ``temp`` is the raw file text (millidegrees)."""
        base = self.root / "class" / "thermal" / f"thermal_zone{number}"
        base.mkdir(parents=True, exist_ok=True)
        (base / "type").write_text(f"{kind}\n")
        if temp is not None:
            (base / "temp").write_text(f"{temp}\n")
        return f"class/thermal/thermal_zone{number}"

    def supply(self, name="BAT0", capacity="80", status="Discharging", kind="Battery"):
        """A power supply; any value may be None to leave its file out."""
        base = self.root / "class" / "power_supply" / name
        base.mkdir(parents=True, exist_ok=True)
        for filename, value in (("capacity", capacity), ("status", status), ("type", kind)):
            if value is not None:
                (base / filename).write_text(f"{value}\n")
        return base


@pytest.fixture
def sysfs(tmp_path):
    return FakeSysfs(tmp_path / "sys")


@pytest.fixture
def factory():
    """gpiozero's own mock pins; every device is handed this factory explicitly."""
    mock = MockFactory()
    yield mock
    mock.close()
