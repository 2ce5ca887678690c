"""Errors of the firmware tools, under the agent's one exception tree.

They live here rather than in ``agent/errors.py`` because only the
firmware tools (and ``igris update``, which calls them) raise them,
and ``agent/errors.py`` must stay portable to MicroPython.
"""

from __future__ import annotations

from agent.errors import IgrisError


class FirmwareError(IgrisError):
    """Base for bundle and boot-image problems."""


class BundleRejected(FirmwareError, ValueError):
    """A bundle was refused; ``reason`` is a short, countable code, the message says why.

    >>> raise BundleRejected("downgrade", "bundle 0.1.0 is older than 0.2.0")  # doctest: +SKIP
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason if not detail else f"{reason}: {detail}")


class BootDirInvalid(FirmwareError, FileNotFoundError):
    """The boot partition to prepare is missing, not a directory, or already prepared."""
