"""systemd's notify protocol (READY, WATCHDOG, STOPPING) without libsystemd.

Only when ``NOTIFY_SOCKET`` is set; elsewhere every call is a no-op. The
watchdog ping is sent from a task on the event loop, so a blocked loop stops
the pings and systemd restarts the agent (``WatchdogSec`` in the unit).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Send ``sd_notify`` datagrams to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1_000_000 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. ``"READY=1"``); False if systemd could not be told."""
        if not self.address:
            return False
        # A leading '@' names a socket in the abstract namespace.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            # Non-blocking: a listener that stops reading (its queue holds only
            # net.unix.max_dgram_qlen datagrams) must not block the event loop.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                               | socket.SOCK_NONBLOCK) as sock:
                sock.connect(address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True
