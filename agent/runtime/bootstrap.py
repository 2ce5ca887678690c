"""First start with nothing enrolled: make a development CA and enroll into it.

A device provisioned for real (Ansible, first-boot image) already holds a
certificate from the fleet CA and never comes here. A developer running
``igris run`` on a laptop gets a working single-device agent at once, with a
loud warning that its CA is local and trusted by nobody else.
"""

from __future__ import annotations

import re
import socket
import warnings
from pathlib import Path

from agent.errors import DevelopmentCaWarning
from agent.identity import FleetCa, Identity, RootLayout, enroll

DEV_FLEET = "dev"


def hostname_device_id() -> str:
    """A device id from the host name, reduced to the characters topics allow."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip("-")
    return name or "igris-device"


def load_or_enroll_dev(root: Path, device_id: str, *, now_ms: int) -> Identity:
    """The enrolled identity in ``root``, or a new one under a development CA."""
    layout = RootLayout(root)
    if not layout.is_enrolled():
        device_id = device_id or hostname_device_id()
        ca = (FleetCa.load(layout.dev_ca) if (layout.dev_ca / "ca.key").exists()
              else FleetCa.init(layout.dev_ca, DEV_FLEET))
        enroll(root, ca, device_id, now_ms=now_ms, days=3650)
        message = (
            f"NOT ENROLLED: made a development CA in {layout.dev_ca} and enrolled "
            f"{device_id!r} into it. Other devices will not trust this agent. "
            "For a fleet, run 'igris enroll --root ROOT --ca FLEET_CA_DIR --device-id ID'."
        )
        warnings.warn(message, DevelopmentCaWarning, stacklevel=2)
    return Identity.load(root, now_ms=now_ms)
