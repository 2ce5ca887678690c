"""Versions of Igris and of the libraries it runs on (for status and bug reports)."""

from __future__ import annotations

import platform
from importlib import metadata

from agent import __version__

RUNTIME_DISTRIBUTIONS = ("paho-mqtt", "PyNaCl", "psutil", "gpiozero")


def versions() -> dict[str, str]:
    """``{"igris": ..., "python": ..., "paho-mqtt": ..., ...}``."""
    out = {"igris": __version__, "python": platform.python_version()}
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out
