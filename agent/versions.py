"""Versions of Igris and of the libraries it runs on (for status and bug reports)."""

from __future__ import annotations

import platform
import sys

from agent import __version__

# Read from the modules the agent has loaded anyway: importlib.metadata costs
# about 0.9 MB of RSS (zipfile, csv, email parsing) for four strings.
_MODULES = (("paho-mqtt", "paho.mqtt"), ("PyNaCl", "nacl"), ("psutil", "psutil"))


def versions() -> dict[str, str]:
    """``{"igris": ..., "python": ..., "paho-mqtt": ..., ...}``."""
    out = {"igris": __version__, "python": platform.python_version()}
    for dist, module in _MODULES:
        __import__(module)
        out[dist] = getattr(sys.modules[module], "__version__", "unknown")
    if "gpiozero" in sys.modules:  # gpiozero has no __version__; it loaded metadata itself
        from importlib import metadata

        out["gpiozero"] = metadata.version("gpiozero")
    else:
        out["gpiozero"] = "not loaded (no GPIO in this profile)"
    return out
