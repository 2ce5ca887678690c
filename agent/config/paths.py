"""Where an agent keeps its state when ``--root`` is not given."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_ROOT = Path("/var/lib/igris")


def default_root(environ: dict[str, str] | None = None) -> Path:
    """``$IGRIS_ROOT``, else ``/var/lib/igris`` as root, else the user's data dir."""
    env = os.environ if environ is None else environ
    if env.get("IGRIS_ROOT"):
        return Path(env["IGRIS_ROOT"]).expanduser()
    if os.geteuid() == 0:
        return SYSTEM_ROOT
    data_home = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "igris"
