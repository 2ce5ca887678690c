"""Target profiles: what a board has and the limits the agent keeps on it.

A profile names the health LED's pin, the GPIO inputs the agent reads, the
outputs commands may drive, the thermal zones to watch, where the battery
is, the board's power draw and the agent's budget. Profiles ship as TOML in
the package ``agent.profiles`` (the repository's ``targets/``), so an
installed wheel finds them without the repository.

A profile is checked completely when it is loaded, so a typo stops the
agent at start-up with the file, the key and what was expected, instead of
surprising it later on a board in the field::

    >>> profile = load_profile("rpi4")
    >>> profile.thermal.warn_c
    75.0
    >>> profile.gpio.inputs["power_save"].pin
    17
"""

from __future__ import annotations

import importlib.resources
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, NoReturn

from agent.errors import ConfigInvalid, ProfileNotFound

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable

    import tomllib
else:
    from importlib.abc import Traversable

    import tomli as tomllib

# Header GPIOs of the 40-pin connector, in BCM numbering (what gpiozero takes).
_PIN_RANGE = (0, 27)
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_GPIO_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_SUPPLY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True, slots=True)
class LedSpec:
    """Where the health LED is: ``pin`` is None when the board has none."""

    pin: int | None
    active_high: bool


@dataclass(frozen=True, slots=True)
class GpioInputSpec:
    """One named digital input; with ``pull_up`` it is active when pulled low."""

    pin: int
    pull_up: bool


@dataclass(frozen=True, slots=True)
class GpioSpec:
    """Named inputs the agent reads, and the outputs commands may drive."""

    inputs: Mapping[str, GpioInputSpec] = field(hash=False)
    outputs: Mapping[str, int] = field(hash=False)


@dataclass(frozen=True, slots=True)
class ThermalSpec:
    """Thermal zones (paths or globs under the sysfs root) and their limits."""

    zones: tuple[str, ...]
    warn_c: float
    critical_c: float


@dataclass(frozen=True, slots=True)
class PowerSpec:
    """Where the battery is and what the board draws, for energy estimates.

    ``battery`` is ``"none"``, ``"psutil"`` or ``"sysfs:<name>"`` for
    ``class/power_supply/<name>``.
    """

    battery: str
    watts_idle: float
    watts_load: float
    low_battery_percent: float


@dataclass(frozen=True, slots=True)
class Limits:
    """The agent's budget on this board.

    ``memory_mb`` is the agent's resident memory above which its health is
    degraded; ``cpu_percent`` is the system CPU load above which the device
    should take on no new work.
    """

    memory_mb: int
    cpu_percent: float


@dataclass(frozen=True, slots=True)
class TargetProfile:
    """Everything the agent knows about the board it runs on."""

    name: str
    description: str
    led: LedSpec
    gpio: GpioSpec
    thermal: ThermalSpec
    power: PowerSpec
    limits: Limits
    has_vcgencmd: bool
    source: str


def available_profiles() -> tuple[str, ...]:
    """Names of the profiles that ship with Igris, sorted."""
    root = shipped_profiles()
    if not root.is_dir():
        return ()
    return tuple(
        sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))
    )


def load_profile(name: str) -> TargetProfile:
    """Load and check the shipped profile ``name`` (e.g. ``"rpi4"``).

    Raises :class:`ProfileNotFound` (listing the shipped names) for an unknown
    name and :class:`ConfigInvalid` for a malformed profile.
    """
    names = available_profiles()
    if name not in names:
        shipped = ", ".join(names) or "none"
        raise ProfileNotFound(
            f"no target profile named {name!r}; shipped profiles: {shipped} "
            "(or load a custom profile from its file)"
        )
    resource = shipped_profiles() / f"{name}.toml"
    profile = _parse(resource.read_bytes(), str(resource))
    if profile.name != name:
        raise ConfigInvalid(
            f"{resource}: 'name' is {profile.name!r} but the file is {name}.toml; they must match"
        )
    return profile


def load_profile_file(path: str | Path) -> TargetProfile:
    """Load and check a custom profile file (same schema as the shipped ones)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read the profile file: {exc.strerror}") from exc
    return _parse(data, str(path))


def shipped_profiles() -> Traversable:
    try:
        return importlib.resources.files("agent.profiles")
    except ModuleNotFoundError:
        # setuptools maps targets/ to agent.profiles only when installing;
        # in an uninstalled source checkout targets/ sits beside agent/.
        return Path(__file__).resolve().parents[2] / "targets"


def _parse(raw: bytes, file: str) -> TargetProfile:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigInvalid(f"{file}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"{file}: not valid TOML: {exc}") from exc

    top = _Table(data, file)
    name = top.text("name", pattern=_NAME, what="a lowercase name like 'rpi4'")
    description = top.text("description")
    has_vcgencmd = top.flag("has_vcgencmd", default=False)

    led_table = top.table("led", required=False)
    led = LedSpec(
        pin=led_table.optional_pin("pin"),
        active_high=led_table.flag("active_high", default=True),
    )
    led_table.finish()

    gpio = _read_gpio(top.table("gpio", required=False))
    _check_pins_distinct(led, gpio, file)

    thermal_table = top.table("thermal")
    zones = tuple(
        thermal_table.each_text(
            "zones", check=_relative_path, what="paths relative to the sysfs root"
        )
    )
    thermal = ThermalSpec(
        zones=zones,
        warn_c=thermal_table.number("warn_c", low=0, high=150),
        critical_c=thermal_table.number("critical_c", low=0, high=150),
    )
    if thermal.warn_c >= thermal.critical_c:
        thermal_table.fail(
            "warn_c", f"below 'thermal.critical_c' ({thermal.critical_c})", thermal.warn_c
        )
    thermal_table.finish()

    power_table = top.table("power")
    power = PowerSpec(
        battery=power_table.text(
            "battery", check=_battery_source, what="'none', 'psutil' or 'sysfs:<name>'"
        ),
        watts_idle=power_table.number("watts_idle", low=0.01, high=1000),
        watts_load=power_table.number("watts_load", low=0.01, high=1000),
        low_battery_percent=power_table.number("low_battery_percent", low=0, high=100),
    )
    if power.watts_load < power.watts_idle:
        power_table.fail(
            "watts_load", f"at least 'power.watts_idle' ({power.watts_idle})", power.watts_load
        )
    power_table.finish()

    limits_table = top.table("limits")
    limits = Limits(
        memory_mb=limits_table.integer("memory_mb", low=1, high=1_048_576),
        cpu_percent=limits_table.number("cpu_percent", low=1, high=100),
    )
    limits_table.finish()
    top.finish()

    return TargetProfile(
        name=name,
        description=description,
        led=led,
        gpio=gpio,
        thermal=thermal,
        power=power,
        limits=limits,
        has_vcgencmd=has_vcgencmd,
        source=file,
    )


def _read_gpio(table: _Table) -> GpioSpec:
    inputs_table = table.table("inputs", required=False)
    inputs: dict[str, GpioInputSpec] = {}
    for input_name in inputs_table.names():
        _check_gpio_name(inputs_table, input_name)
        entry = inputs_table.table(input_name)
        inputs[input_name] = GpioInputSpec(
            pin=entry.pin("pin"), pull_up=entry.flag("pull_up", default=False)
        )
        entry.finish()

    outputs_table = table.table("outputs", required=False)
    outputs: dict[str, int] = {}
    for output_name in outputs_table.names():
        _check_gpio_name(outputs_table, output_name)
        outputs[output_name] = outputs_table.pin(output_name)
    table.finish()
    return GpioSpec(inputs=MappingProxyType(inputs), outputs=MappingProxyType(outputs))


def _check_gpio_name(table: _Table, name: str) -> None:
    if not _GPIO_NAME.match(name):
        table.fail(name, "named with letters, digits, '_' or '-' (starting with a letter)", name)


def _check_pins_distinct(led: LedSpec, gpio: GpioSpec, file: str) -> None:
    """One pin, one job: an output wired to the LED or an input is a wiring bug."""
    users: list[tuple[str, int]] = []
    if led.pin is not None:
        users.append(("led.pin", led.pin))
    users += [(f"gpio.inputs.{n}", spec.pin) for n, spec in gpio.inputs.items()]
    users += [(f"gpio.outputs.{n}", pin) for n, pin in gpio.outputs.items()]
    seen: dict[int, str] = {}
    for key, pin in users:
        if pin in seen:
            raise ConfigInvalid(f"{file}: {key!r} uses pin {pin}, already used by {seen[pin]!r}")
        seen[pin] = key


def _relative_path(value: str) -> bool:
    path = PurePosixPath(value)
    return bool(value) and not path.is_absolute() and ".." not in path.parts


def _battery_source(value: str) -> bool:
    if value in ("none", "psutil"):
        return True
    kind, _, supply = value.partition(":")
    return kind == "sysfs" and bool(_SUPPLY_NAME.match(supply))


_MISSING: Any = object()


class _Table:
    """One TOML table being read against the schema.

    It remembers every key the schema asked for, so :meth:`finish` can name
    the keys nobody asked for (typos) and suggest the nearest known one.
    """

    __slots__ = ("_asked", "_data", "_file", "_prefix")

    def __init__(self, data: Mapping[str, Any], file: str, prefix: str = ""):
        self._data = data
        self._file = file
        self._prefix = prefix
        self._asked: set[str] = set()

    def names(self) -> list[str]:
        """Keys of a free-form table (named inputs or outputs); all count as asked."""
        self._asked.update(self._data)
        return list(self._data)

    def fail(self, key: str, expected: str, value: Any = _MISSING) -> NoReturn:
        where = f"{self._prefix}{key}"
        if value is _MISSING:
            import difflib  # only on error: keeps the agent's RSS down

            others = [k for k in self._data if k != key]
            close = difflib.get_close_matches(key, others, n=1)
            typo = f" (is {self._prefix + close[0]!r} a typo?)" if close else ""
            raise ConfigInvalid(f"{self._file}: {where!r} is missing{typo}; expected {expected}")
        raise ConfigInvalid(f"{self._file}: {where!r} must be {expected}, got {value!r}")

    def finish(self) -> None:
        for key in self._data:
            if key not in self._asked:
                import difflib

                close = difflib.get_close_matches(key, self._asked, n=1)
                hint = f"; did you mean {self._prefix + close[0]!r}?" if close else ""
                raise ConfigInvalid(f"{self._file}: unknown key {self._prefix + key!r}{hint}")

    def _get(self, key: str, expected: str, default: Any) -> Any:
        self._asked.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            self.fail(key, expected)
        return default

    def table(self, key: str, *, required: bool = True) -> _Table:
        value = self._get(key, "a table", _MISSING if required else {})
        if not isinstance(value, dict):
            self.fail(key, "a table", value)
        return _Table(value, self._file, f"{self._prefix}{key}.")

    def text(
        self,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        check: Callable[[str], bool] | None = None,
        what: str = "a non-empty string",
    ) -> str:
        value = self._get(key, what, _MISSING)
        ok = isinstance(value, str) and bool(value.strip())
        if ok and pattern is not None:
            ok = bool(pattern.match(value))
        if ok and check is not None:
            ok = check(value)
        if not ok:
            self.fail(key, what, value)
        return value

    def each_text(self, key: str, *, check: Callable[[str], bool], what: str) -> list[str]:
        expected = f"a list of {what}"
        value = self._get(key, expected, _MISSING)
        if not isinstance(value, list) or not all(isinstance(v, str) and check(v) for v in value):
            self.fail(key, expected, value)
        return value

    def flag(self, key: str, *, default: bool) -> bool:
        value = self._get(key, "true or false", default)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def number(self, key: str, *, low: float, high: float) -> float:
        expected = f"a number from {low} to {high}"
        value = self._get(key, expected, _MISSING)
        # TOML booleans are Python ints; a bare `true` is never a number here.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not low <= value <= high
        ):
            self.fail(key, expected, value)
        return float(value)

    def integer(self, key: str, *, low: int, high: int) -> int:
        expected = f"a whole number from {low} to {high}"
        value = self._get(key, expected, _MISSING)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, expected, value)
        return value

    def pin(self, key: str) -> int:
        pin = self.optional_pin(key, required=True)
        assert pin is not None  # required: a missing pin has already failed
        return pin

    def optional_pin(self, key: str, *, required: bool = False) -> int | None:
        low, high = _PIN_RANGE
        expected = f"a BCM GPIO number from {low} to {high}"
        value = self._get(key, expected, _MISSING if required else None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, expected, value)
        return value
