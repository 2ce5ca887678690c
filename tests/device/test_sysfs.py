"""Sysfs readings from a fake tree: real values when present, None when not, never a raise."""

import logging

from agent.device import SysfsReader


def test_thermal_zone_reads_type_and_millidegrees(sysfs):
    zone = sysfs.zone(0, "cpu-thermal", "48312")
    reading = SysfsReader(sysfs.root).thermal_zone(zone)
    assert reading.zone == zone
    assert reading.type == "cpu-thermal"
    assert reading.celsius == 48.312


def test_negative_temperature_is_kept(sysfs):
    zone = sysfs.zone(0, "outdoor", "-12500")
    assert SysfsReader(sysfs.root).thermal_zone(zone).celsius == -12.5


def test_missing_zone_reads_as_none(sysfs):
    reading = SysfsReader(sysfs.root).thermal_zone("class/thermal/thermal_zone7")
    assert reading.type is None and reading.celsius is None


def test_garbled_temperature_is_tolerated_and_logged_at_debug(sysfs, caplog):
    zone = sysfs.zone(0, "cpu-thermal", "4a8x")
    with caplog.at_level(logging.DEBUG, logger="agent.device.sysfs"):
        reading = SysfsReader(sysfs.root).thermal_zone(zone)
    assert reading.celsius is None
    assert reading.type == "cpu-thermal"
    assert any("thermal_zone0/temp" in r.getMessage() for r in caplog.records)
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_binary_garbage_and_empty_files_read_as_none(sysfs):
    reader = SysfsReader(sysfs.root)
    zone = sysfs.zone(0, "cpu-thermal", None)
    (sysfs.root / zone / "temp").write_bytes(b"\xff\xfe\x00")
    assert reader.thermal_zone(zone).celsius is None
    (sysfs.root / zone / "temp").write_text("")
    assert reader.thermal_zone(zone).celsius is None


def test_sensor_that_cannot_be_read_is_none(sysfs):
    # A directory where the file should be fails like a sensor answering EIO.
    zone = sysfs.zone(0, "iwlwifi_1", None)
    (sysfs.root / zone / "temp").mkdir()
    assert SysfsReader(sysfs.root).thermal_zone(zone).celsius is None


def test_disabled_sensor_sentinel_values_are_ignored(sysfs):
    reader = SysfsReader(sysfs.root)
    assert reader.thermal_zone(sysfs.zone(0, "off", "-274000")).celsius is None
    assert reader.thermal_zone(sysfs.zone(1, "stuck", "2147483647")).celsius is None


def test_find_zones_expands_globs_in_numeric_order_and_keeps_plain_paths(sysfs):
    for number in (10, 2, 0, 1):
        sysfs.zone(number)
    zones = SysfsReader(sysfs.root).find_zones(
        ["class/thermal/thermal_zone*", "class/thermal/thermal_zone9"]
    )
    assert zones == (
        "class/thermal/thermal_zone0",
        "class/thermal/thermal_zone1",
        "class/thermal/thermal_zone2",
        "class/thermal/thermal_zone10",
        "class/thermal/thermal_zone9",
    )


def test_find_zones_on_a_board_without_thermal_is_empty(sysfs):
    sysfs.root.mkdir(parents=True)
    assert SysfsReader(sysfs.root).find_zones(["class/thermal/thermal_zone*"]) == ()


def test_power_supply_reads_capacity_status_and_type(sysfs):
    sysfs.supply("BAT0", capacity="57", status="Charging")
    supply = SysfsReader(sysfs.root).power_supply("BAT0")
    assert supply.name == "BAT0"
    assert supply.capacity == 57.0
    assert supply.status == "Charging"
    assert supply.type == "Battery"


def test_absent_power_supply_is_none(sysfs):
    sysfs.root.mkdir(parents=True)
    assert SysfsReader(sysfs.root).power_supply("BAT0") is None


def test_garbled_or_impossible_capacity_is_none_but_status_survives(sysfs):
    reader = SysfsReader(sysfs.root)
    sysfs.supply("BAT0", capacity="full", status="Discharging")
    assert reader.power_supply("BAT0").capacity is None
    assert reader.power_supply("BAT0").status == "Discharging"
    sysfs.supply("BAT1", capacity="150")
    assert reader.power_supply("BAT1").capacity is None
    sysfs.supply("BAT2", capacity=None, status=None)
    assert reader.power_supply("BAT2").capacity is None
    assert reader.power_supply("BAT2").status is None
