"""Read the configuration: defaults, then the TOML file, then ``IGRIS_*``, then flags."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.schema import DEFAULT_API_KEY_ENV, Config, build_config, section_keys
from agent.errors import ConfigInvalid

if sys.version_info >= (3, 11):
    import tomllib
else:  # Jetson's Ubuntu 22.04 ships Python 3.10
    import tomli as tomllib

CONFIG_NAME = "agent.toml"
ENV_PREFIX = "IGRIS_"
# Environment variables that are not settings (read elsewhere, by design; the API key
# by agent.ai.remote.load_api_key).
_NOT_SETTINGS = {"IGRIS_ROOT", "IGRIS_CONFIG", "IGRIS_TEST_CACHE", DEFAULT_API_KEY_ENV}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file and the line."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigInvalid(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigInvalid(f"{path}: cannot read: {exc.strerror}") from None


def env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``IGRIS_MQTT_BROKER=mqtt://h:1883`` → ``{"mqtt": {"broker": "mqtt://h:1883"}}``."""
    sections = section_keys()
    layer: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or key not in sections[section]:
            raise ConfigInvalid(
                f"environment: {name} is not a setting; use IGRIS_<SECTION>_<KEY>, e.g. "
                "IGRIS_MQTT_BROKER (see 'igris run --help')"
            )
        layer.setdefault(section, {})[key] = value
    return layer


def load_config(
    root: Path,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """The agent's configuration for ``root``.

    ``config_file`` defaults to ``<root>/agent.toml``; the default may be
    absent (embedded defaults apply), an explicitly named file may not.
    """
    env = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []
    path = config_file or (Path(env["IGRIS_CONFIG"]) if env.get("IGRIS_CONFIG") else None)
    if path is not None:
        if not path.exists():
            raise ConfigInvalid(f"{path}: config file not found")
        layers.append((str(path), read_toml(path)))
    elif (root / CONFIG_NAME).exists():
        layers.append((str(root / CONFIG_NAME), read_toml(root / CONFIG_NAME)))
    layers.append(("environment", env_layer(env)))
    if overrides:
        layers.append(("command line", overrides))
    return build_config(layers)
