"""Configuration: one TOML file, ``IGRIS_*`` overrides, validated up front."""

from agent.config.load import CONFIG_NAME, load_config, read_toml
from agent.config.paths import default_root
from agent.config.schema import (
    AgentSettings,
    Config,
    HealthSettings,
    LimitSettings,
    MqttSettingsSection,
    build_config,
)

__all__ = [
    "CONFIG_NAME", "AgentSettings", "Config", "HealthSettings", "LimitSettings",
    "MqttSettingsSection", "build_config", "default_root", "load_config", "read_toml",
]
