"""Target profiles: the shipped ones load and make sense; bad ones say where they are bad."""

import importlib.util
import sys
from pathlib import Path

import pytest

from agent.device import available_profiles, load_profile, load_profile_file
from agent.errors import ConfigInvalid, ProfileNotFound

SHIPPED = ("generic-linux", "jetson-orin-nano", "pi-zero-2w", "rpi4", "rpi5")

MINIMAL = """\
name = "bench"
description = "A board on the bench"

[thermal]
zones = ["class/thermal/thermal_zone0"]
warn_c = 70.0
critical_c = 80.0

[power]
battery = "sysfs:BAT0"
watts_idle = 1.0
watts_load = 4.0
low_battery_percent = 15

[limits]
memory_mb = 200
cpu_percent = 75
"""


def write(tmp_path, text, name="bench.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_five_targets_ship():
    assert available_profiles() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_with_sane_values(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert 50 <= profile.thermal.warn_c < profile.thermal.critical_c <= 100
    assert profile.thermal.zones
    assert 0 < profile.power.watts_idle < profile.power.watts_load <= 30
    assert 0 < profile.power.low_battery_percent < 50
    assert 64 <= profile.limits.memory_mb <= 2048
    assert 50 <= profile.limits.cpu_percent <= 100
    is_pi = name.startswith(("rpi", "pi-"))
    assert profile.has_vcgencmd is is_pi
    # Pis get a real LED pin and a power-save switch; the others have no GPIO for gpiozero.
    assert (profile.led.pin is not None) is is_pi
    assert ("power_save" in profile.gpio.inputs) is is_pi


def test_board_power_figures_rank_as_the_hardware_does():
    zero, pi4, jetson = (load_profile(n).power for n in ("pi-zero-2w", "rpi4", "jetson-orin-nano"))
    assert zero.watts_idle < pi4.watts_idle < jetson.watts_idle
    assert zero.watts_load < pi4.watts_load < jetson.watts_load


@pytest.mark.parametrize("name", ["rpi3", "../targets/rpi4", "rpi4.toml", ""])
def test_unknown_profile_names_every_shipped_one(name):
    with pytest.raises(ProfileNotFound) as caught:
        load_profile(name)
    assert isinstance(caught.value, LookupError)
    for shipped in SHIPPED:
        assert shipped in str(caught.value)


def test_profiles_are_found_as_package_data_not_beside_the_source(tmp_path, monkeypatch):
    # What an installed wheel looks like: agent.profiles is a real package
    # directory holding the TOML files, wherever site-packages is.
    package = tmp_path / "site" / "profiles"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write(package, MINIMAL, "bench.toml")
    spec = importlib.util.spec_from_file_location(
        "agent.profiles", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "agent.profiles", module)

    write(package, MINIMAL, "renamed.toml")

    assert available_profiles() == ("bench", "renamed")
    profile = load_profile("bench")
    assert Path(profile.source) == package / "bench.toml"
    with pytest.raises(ConfigInvalid, match=r"'name' is 'bench' but the file is renamed\.toml"):
        load_profile("renamed")


def test_minimal_custom_profile_gets_the_defaults(tmp_path):
    profile = load_profile_file(write(tmp_path, MINIMAL))
    assert profile.name == "bench"
    assert profile.led.pin is None and profile.led.active_high is True
    assert dict(profile.gpio.inputs) == {} and dict(profile.gpio.outputs) == {}
    assert profile.has_vcgencmd is False
    assert profile.power.battery == "sysfs:BAT0"
    assert profile.source == str(tmp_path / "bench.toml")


def test_custom_profile_reads_named_inputs_and_outputs(tmp_path):
    text = MINIMAL + """
[led]
pin = 18
active_high = false

[gpio.inputs]
power_save = { pin = 17, pull_up = true }
door = { pin = 27 }

[gpio.outputs]
relay = 23
"""
    profile = load_profile_file(write(tmp_path, text))
    assert profile.led.pin == 18 and profile.led.active_high is False
    assert profile.gpio.inputs["power_save"].pin == 17
    assert profile.gpio.inputs["power_save"].pull_up is True
    assert profile.gpio.inputs["door"].pull_up is False
    assert dict(profile.gpio.outputs) == {"relay": 23}


# (text to replace, its replacement, what the error must say)
BREAKAGES = [
    ("warn_c = 70.0", 'warn_c = "hot"',
     "'thermal.warn_c' must be a number from 0 to 150, got 'hot'"),
    ("warn_c = 70.0", "warn_C = 70.0",
     "'thermal.warn_c' is missing (is 'thermal.warn_C' a typo?)"),
    ("warn_c = 70.0", "warn_c = 90.0",
     "'thermal.warn_c' must be below 'thermal.critical_c' (80.0)"),
    ("[power]", "[powr]",
     "'power' is missing (is 'powr' a typo?); expected a table"),
    ("cpu_percent = 75", "",
     "'limits.cpu_percent' is missing; expected a number from 1 to 100"),
    ("memory_mb = 200", "memory_mb = 200.5",
     "'limits.memory_mb' must be a whole number"),
    ("memory_mb = 200", "memory_mb = true",
     "'limits.memory_mb' must be a whole number"),
    ('battery = "sysfs:BAT0"', 'battery = "sysfs:../x"',
     "'power.battery' must be 'none', 'psutil'"),
    ("watts_load = 4.0", "watts_load = 0.5",
     "'power.watts_load' must be at least 'power.watts_idle'"),
    ('["class/thermal/thermal_zone0"]', '["/sys/class/thermal"]',
     "'thermal.zones' must be a list"),
    ('description = "A board on the bench"', "description = 3",
     "'description' must be a non-empty"),
    ('name = "bench"', 'name = "Bench Board"',
     "'name' must be a lowercase name"),
    ("[limits]", "has_vcgencmd = 1\n[limits]",
     "unknown key 'power.has_vcgencmd'"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BREAKAGES)
def test_malformed_profile_names_file_and_key(tmp_path, old, new, expected):
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(ConfigInvalid) as caught:
        load_profile_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


# (extra profile text, what the error must say)
BAD_PINS = [
    ("[led]\npin = 40\n",
     "'led.pin' must be a BCM GPIO number from 0 to 27, got 40"),
    ("has_vcgencmd = 'yes'\n",
     "'has_vcgencmd' must be true or false"),
    ("[led]\npin = 17\n[gpio.inputs]\nbutton = { pin = 17 }\n",
     "'gpio.inputs.button' uses pin 17, already used by 'led.pin'"),
    ("[gpio.outputs]\nrelay = 23\nfan = 23\n",
     "'gpio.outputs.fan' uses pin 23"),
    ("[gpio.inputs]\nbutton = { pin = 5, pullup = true }\n",
     "unknown key 'gpio.inputs.button.pullup'; did you mean 'gpio.inputs.button.pull_up'?"),
    ("[gpio.outputs]\n'2relay' = 23\n",
     "'gpio.outputs.2relay' must be named with letters"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_PINS)
def test_malformed_gpio_and_led_sections_name_the_key(tmp_path, extra, expected):
    # Top-level keys must come before the first table, so prepend those.
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    path = write(tmp_path, text)
    with pytest.raises(ConfigInvalid) as caught:
        load_profile_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_broken_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, MINIMAL.replace("warn_c = 70.0", "warn_c = = 70"))
    with pytest.raises(ConfigInvalid, match=r"not valid TOML.*line 6") as caught:
        load_profile_file(path)
    assert str(path) in str(caught.value)


def test_missing_profile_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigInvalid, match="cannot read the profile file"):
        load_profile_file(tmp_path / "nope.toml")
