"""Health samples from a fake sysfs tree, mock GPIO and a stand-in vcgencmd."""

import asyncio
import collections
import dataclasses
import json
import sys

import psutil
import pytest

from agent.device import HealthMonitor, Limits, PowerSpec, load_profile

ZONE0 = "class/thermal/thermal_zone0"


def board(battery="none", memory_mb=4096, has_vcgencmd=False, zones=(ZONE0,)):
    """The rpi4 profile, adjusted: a roomy memory budget unless a test says otherwise."""
    rpi4 = load_profile("rpi4")
    return dataclasses.replace(
        rpi4,
        has_vcgencmd=has_vcgencmd,
        thermal=dataclasses.replace(rpi4.thermal, zones=tuple(zones)),
        power=PowerSpec(battery, rpi4.power.watts_idle, rpi4.power.watts_load, 20.0),
        limits=Limits(memory_mb=memory_mb, cpu_percent=80.0),
    )


def vcgencmd_answering(word):
    return (sys.executable, "-c", f"print('throttled={word}')")


def sample(profile, sysfs, factory, **kw):
    monitor = HealthMonitor(profile, sysfs_root=sysfs.root, pin_factory=factory, **kw)
    try:
        return asyncio.run(monitor.sample())
    finally:
        monitor.close()


def test_cool_board_on_mains_is_healthy(sysfs, factory):
    sysfs.zone(0, "cpu-thermal", "48312")
    report = sample(board(), sysfs, factory, clock=lambda: 1_700_000_000.5)
    assert report.status == "healthy" and report.reasons == ()
    assert dict(report.temperatures_c) == {"cpu-thermal": 48.3}
    assert report.max_temperature_c == 48.3
    assert report.taken_at == 1_700_000_000.5
    assert report.battery is None and report.throttle is None
    assert report.process_rss_mb > 1
    assert 0 < report.memory_used_mb < report.memory_total_mb


def test_over_warn_is_degraded_and_says_which_zone(sysfs, factory):
    sysfs.zone(0, "cpu-thermal", "78500")
    report = sample(board(), sysfs, factory)
    assert report.status == "degraded"
    assert report.reasons == ("cpu-thermal at 78.5 C, over the 75 C warning limit",)


def test_over_critical_says_critical(sysfs, factory):
    sysfs.zone(0, "cpu-thermal", "86000")
    (reason,) = sample(board(), sysfs, factory).reasons
    assert "85 C critical limit" in reason


def test_hottest_zone_decides_and_duplicate_types_keep_their_own_label(sysfs, factory):
    sysfs.zone(0, "acpitz", "40000")
    sysfs.zone(1, "acpitz", "77000")
    sysfs.zone(2, "x86_pkg_temp", "50000")
    report = sample(board(zones=["class/thermal/thermal_zone*"]), sysfs, factory)
    assert dict(report.temperatures_c) == {
        "acpitz": 40.0,
        "thermal_zone1": 77.0,
        "x86_pkg_temp": 50.0,
    }
    assert report.max_temperature_c == 77.0
    assert report.reasons == ("thermal_zone1 at 77.0 C, over the 75 C warning limit",)


def test_garbled_and_missing_sensors_leave_a_usable_report(sysfs, factory):
    sysfs.zone(0, "cpu-thermal", "garbage")
    profile = board(battery="sysfs:BAT0", zones=[ZONE0, "class/thermal/thermal_zone5"])
    report = sample(profile, sysfs, factory)
    assert report.status == "healthy"
    assert dict(report.temperatures_c) == {} and report.max_temperature_c is None
    assert report.battery.percent is None and report.battery.plugged is None
    assert report.battery.source == "sysfs:BAT0"


def test_low_battery_unplugged_is_degraded(sysfs, factory):
    sysfs.supply("BAT0", capacity="12", status="Discharging")
    report = sample(board(battery="sysfs:BAT0"), sysfs, factory)
    assert report.battery.percent == 12.0 and report.battery.plugged is False
    assert report.status == "degraded"
    assert report.reasons == ("battery at 12% and not charging (low is 20%)",)


@pytest.mark.parametrize("status", ["Charging", "Full", "Not charging"])
def test_low_battery_on_external_power_is_healthy(sysfs, factory, status):
    sysfs.supply("BAT0", capacity="12", status=status)
    report = sample(board(battery="sysfs:BAT0"), sysfs, factory)
    assert report.battery.plugged is True
    assert report.status == "healthy"


def test_full_enough_battery_unplugged_is_healthy(sysfs, factory):
    sysfs.supply("BAT0", capacity="64", status="Discharging")
    assert sample(board(battery="sysfs:BAT0"), sysfs, factory).status == "healthy"


def test_psutil_battery_source(sysfs, factory, monkeypatch):
    # psutil's own answer type: a named tuple with these three fields.
    sbattery = collections.namedtuple("sbattery", "percent secsleft power_plugged")
    battery = sbattery(percent=9.4, secsleft=600, power_plugged=False)
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery)
    report = sample(board(battery="psutil"), sysfs, factory)
    assert (report.battery.percent, report.battery.plugged) == (9.4, False)
    assert report.battery.source == "psutil"
    assert report.status == "degraded"


def test_agent_memory_over_its_limit_is_degraded(sysfs, factory):
    report = sample(board(memory_mb=1), sysfs, factory)
    assert report.status == "degraded"
    assert len(report.reasons) == 1
    assert report.reasons[0].startswith("agent memory ")
    assert report.reasons[0].endswith("over its 1 MB limit")


def test_under_voltage_now_is_degraded(sysfs, factory):
    profile = board(has_vcgencmd=True)
    report = sample(profile, sysfs, factory, throttle_command=vcgencmd_answering("0x50005"))
    assert report.throttle.under_voltage and report.throttle.throttled
    assert report.status == "degraded"
    assert report.reasons == (
        "under-voltage now: the power supply is too weak",
        "CPU throttled by the firmware",
    )


def test_throttling_that_is_over_is_reported_but_healthy(sysfs, factory):
    profile = board(has_vcgencmd=True)
    report = sample(profile, sysfs, factory, throttle_command=vcgencmd_answering("0x50000"))
    assert report.throttle.under_voltage_occurred
    assert report.status == "healthy"


def test_missing_vcgencmd_leaves_throttle_unknown(sysfs, factory):
    profile = board(has_vcgencmd=True)
    report = sample(profile, sysfs, factory, throttle_command=("igris-no-such-vcgencmd",))
    assert report.throttle is None and report.status == "healthy"


def test_gpio_inputs_follow_the_pins(sysfs, factory):
    monitor = HealthMonitor(board(), sysfs_root=sysfs.root, pin_factory=factory)
    try:
        assert asyncio.run(monitor.sample()).gpio == {"power_save": False}
        factory.pin(17).drive_low()  # the power-save switch closes to ground
        assert asyncio.run(monitor.sample()).gpio == {"power_save": True}
    finally:
        monitor.close()


def test_cpu_load_is_unknown_until_a_real_window_has_passed(sysfs, factory):
    # Right after start-up psutil's window is a few ms wide and would read 0 or 100 %.
    assert sample(board(), sysfs, factory).cpu_percent is None


def test_to_dict_is_json_ready_and_complete(sysfs, factory):
    sysfs.zone(0, "cpu-thermal", "80000")
    sysfs.supply("BAT0", capacity="55", status="Charging")
    profile = board(battery="sysfs:BAT0", has_vcgencmd=True)
    report = sample(profile, sysfs, factory, throttle_command=vcgencmd_answering("0x4"))
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert set(as_dict) == {f.name for f in dataclasses.fields(report)}
    assert as_dict["status"] == "degraded" and len(as_dict["reasons"]) == 2
    assert as_dict["temperatures_c"] == {"cpu-thermal": 80.0}
    assert as_dict["battery"] == {"percent": 55.0, "plugged": True, "source": "sysfs:BAT0"}
    assert as_dict["throttle"]["raw"] == "0x4" and as_dict["throttle"]["throttled"] is True
    assert as_dict["gpio"] == {"power_save": False}
    assert len(as_dict["load_average"]) == 3
