"""Agent wheels for update tests: the wheel built from this tree, as another release."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path


def rewheel(wheel: Path, version: str, out_dir: Path, *, crash: bool = False) -> Path:
    """The agent wheel as release ``version`` (and, with ``crash``, one whose agent exits at
    once with status 3, as a release with a broken start would)."""
    old = re.match(r"igris_agent-([^-]+)-", wheel.name).group(1)
    out = out_dir / wheel.name.replace(old, version)
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            name = item.filename.replace(f"igris_agent-{old}.dist-info",
                                         f"igris_agent-{version}.dist-info")
            if item.filename == "agent/__init__.py":
                data = data.replace(f'__version__ = "{old}"'.encode(),
                                    f'__version__ = "{version}"'.encode())
            elif name.endswith(".dist-info/METADATA"):
                data = data.replace(f"Version: {old}".encode(), f"Version: {version}".encode())
            elif crash and item.filename == "agent/__main__.py":
                data = b"raise SystemExit(3)\n"
            dst.writestr(name, data)
    return out
