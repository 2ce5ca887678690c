"""The agent's settings: every key, its type, default and check, in one table.

ESPHome-style: the whole file is validated before anything starts, and an
error names the file, the ``[section] key``, what was expected and what was
found (with a "did you mean" for typos).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from agent.errors import ConfigInvalid, TopicInvalid
from agent.suggest import close_match
from agent.wire import check_name

DEFAULT_API_KEY_ENV = "IGRIS_AI_API_KEY"


def _positive(v: float) -> str | None:
    return None if v > 0 else "a positive number"


def _name_or_empty(v: str) -> str | None:
    if v == "":
        return None
    try:
        check_name(v)
    except TopicInvalid:
        return "letters, digits, '.', '_' or '-' (1-64 characters)"
    return None


def _broker_url(v: str) -> str | None:
    if v == "" or v.startswith(("mqtt://", "mqtts://")):
        return None
    return "'' (no broker: run alone) or a URL like mqtt://host:1883 or mqtts://host:8883"


def _http_url_or_empty(v: str) -> str | None:
    if v == "" or v.startswith(("http://", "https://")):
        return None
    return "'' (no remote: nothing leaves the device) or a URL like https://api.openai.com"


def _names(v: str) -> str | None:
    names = [n.strip() for n in v.split(",")]
    if all(n and _name_or_empty(n) is None for n in names):
        return None
    return "comma-separated names of letters, digits, '.', '_' or '-'"


def _share(v: float) -> str | None:
    return None if 0 <= v <= 1 else "a number from 0 to 1 (0: not measured)"


def _api_key_env(v: str) -> str | None:
    # IGRIS_* names are settings (IGRIS_<SECTION>_<KEY>); load.py lets only the default through.
    if v in ("", DEFAULT_API_KEY_ENV) or (
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) and not v.startswith("IGRIS_")
    ):
        return None
    return (f"'' or an environment variable name outside IGRIS_* (which are settings), "
            f"such as {DEFAULT_API_KEY_ENV!r} or 'OPENAI_API_KEY'")


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


@dataclass(frozen=True, slots=True)
class AgentSettings:
    device_id: str = ""  # "" = the enrolled certificate's subject
    fleet: str = ""  # "" = the enrolled certificate's fleet
    target: str = "generic-linux"
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class MqttSettingsSection:
    broker: str = ""  # "" = no broker: run alone on the in-process transport
    topic_prefix: str = "igris"
    protocol: str = "5"
    keepalive_s: int = 30
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    offline_queue: int = 1000


@dataclass(frozen=True, slots=True)
class HealthSettings:
    heartbeat_s: float = 10.0
    sample_s: float = 5.0
    sysfs_root: str = "/sys"
    pin_factory: str = ""  # "" = gpiozero's default; "mock" for a board-less test


@dataclass(frozen=True, slots=True)
class MeshSettings:
    # "auto": the whole fleet for operators, schedulers and devices in no group;
    # a device's own groups otherwise (traffic then scales with the group).
    scope: str = "auto"


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_message_bytes: int = 65536
    clock_skew_s: float = 300.0


@dataclass(frozen=True, slots=True)
class AiSettings:
    # Shipped models this device runs itself ("" = the catalog's device models);
    # add "digits-cnn" on a board that serves peers (and enroll it --cap model:digits-cnn).
    local_models: str = ""
    metered_link: bool = False  # a paid or capped uplink (LTE): no remote when policy says so
    remote_url: str = ""  # "" = no remote backend: no AI request leaves the device
    remote_kind: str = "chat"
    remote_model: str = ""  # the API's model name, e.g. "gpt-4o-mini" (chat only)
    remote_serves: str = "text"  # comma-separated request models (tasks) sent there
    remote_timeout_s: float = 10.0
    remote_accuracy: float = 0.0  # 0 = not measured
    remote_ca_file: str = ""
    api_key_file: str = ""
    api_key_env: str = DEFAULT_API_KEY_ENV


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    lite_dir: str = ""  # "" = not a gateway; else lite records (relative: under the root)


_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("agent", "device_id"): _name_or_empty,
    ("agent", "fleet"): _name_or_empty,
    ("agent", "log_level"): _one_of("debug", "info", "warning", "error"),
    ("mqtt", "broker"): _broker_url,
    ("mqtt", "protocol"): _one_of("5", "3.1.1"),
    ("mqtt", "keepalive_s"): _positive,
    ("mqtt", "offline_queue"): _positive,
    ("health", "heartbeat_s"): _positive,
    ("health", "sample_s"): _positive,
    ("mesh", "scope"): _one_of("auto", "group", "fleet"),
    ("limits", "max_message_bytes"): _positive,
    ("limits", "clock_skew_s"): _positive,
    ("ai", "local_models"): lambda v: None if v == "" else _names(v),
    ("ai", "remote_url"): _http_url_or_empty,
    ("ai", "remote_kind"): _one_of("chat", "tensor"),
    ("ai", "remote_serves"): _names,
    ("ai", "remote_timeout_s"): _positive,
    ("ai", "remote_accuracy"): _share,
    ("ai", "api_key_env"): _api_key_env,
}


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration of one agent (see ``docs/configuration.md``)."""

    agent: AgentSettings = AgentSettings()
    mqtt: MqttSettingsSection = MqttSettingsSection()
    health: HealthSettings = HealthSettings()
    mesh: MeshSettings = MeshSettings()
    limits: LimitSettings = LimitSettings()
    ai: AiSettings = AiSettings()
    gateway: GatewaySettings = GatewaySettings()

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
        """Plain dict of every setting (what ``config.get`` and docs show)."""
        out: dict[str, dict[str, Any]] = {}
        for section in fields(self):
            values = getattr(self, section.name)
            out[section.name] = {f.name: getattr(values, f.name) for f in fields(values)}
        if mask_secrets and out["mqtt"]["key_file"]:
            out["mqtt"]["key_file"] = "***"
        if mask_secrets and out["ai"]["api_key_file"]:
            out["ai"]["api_key_file"] = "***"
        return out


_SECTION_TYPES = {
    "agent": AgentSettings,
    "mqtt": MqttSettingsSection,
    "health": HealthSettings,
    "mesh": MeshSettings,
    "limits": LimitSettings,
    "ai": AiSettings,
    "gateway": GatewaySettings,
}


def section_keys() -> dict[str, list[str]]:
    """Every ``[section]`` and the keys it may hold."""
    return {name: [f.name for f in fields(cls)] for name, cls in _SECTION_TYPES.items()}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against the default's type; strings from env are converted."""
    want = type(default)
    if want is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                         "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigInvalid(f"{where}: expected true or false, got {value!r}")
    if want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigInvalid(f"{where}: expected an integer, got {value!r}")
    if want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigInvalid(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, str):
        raise ConfigInvalid(f"{where}: expected a string, got {value!r}")
    return value


def _unknown(kind: str, name: str, known: list[str], where: str) -> ConfigInvalid:
    close = close_match(name, known)
    hint = f"; did you mean {close!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigInvalid(f"{where}: unknown {kind} {name!r}{hint}")


def build_config(layers: list[tuple[str, dict[str, Any]]]) -> Config:
    """Merge ``(source_name, {section: {key: value}})`` layers, later ones winning.

    Every key is checked against its source, so errors say whether the bad
    value came from the file, the environment or the command line.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTION_TYPES}
    for source, data in layers:
        if not isinstance(data, dict):
            raise ConfigInvalid(f"{source}: expected tables of settings")
        for section, values in data.items():
            if section not in _SECTION_TYPES:
                raise _unknown("section", section, list(_SECTION_TYPES), source)
            if not isinstance(values, dict):
                raise ConfigInvalid(f"{source}: [{section}] must be a table")
            defaults = _SECTION_TYPES[section]()
            names = [f.name for f in fields(defaults)]
            for key, raw in values.items():
                where = f"{source}: [{section}] {key}"
                if key not in names:
                    raise _unknown(f"key in [{section}]", key, names, source)
                value = _coerce(raw, getattr(defaults, key), where)
                check = _CHECKS.get((section, key))
                problem = check(value) if check else None
                if problem:
                    raise ConfigInvalid(f"{where}: expected {problem}, got {value!r}")
                merged[section][key] = value
    return Config(**{name: cls(**merged[name]) for name, cls in _SECTION_TYPES.items()})
