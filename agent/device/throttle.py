"""Raspberry Pi throttling flags, from ``vcgencmd get_throttled``.

Only the Pi firmware knows that the supply sagged or that it capped the
clock; the kernel never hears of it. A weak power supply is the most
common cause of a flaky Pi in the field, so health asks every sample::

    flags = await read_throttled()
    if flags is not None and flags.under_voltage:
        ...

The word's low bits say what is happening now, bits 16-19 what has
happened since boot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

GET_THROTTLED = ("vcgencmd", "get_throttled")

_NOW_BITS = {"under_voltage": 0, "freq_capped": 1, "throttled": 2, "soft_temp_limit": 3}
_SINCE_BOOT_OFFSET = 16
_ANSWER = re.compile(r"throttled=(0x[0-9a-fA-F]+|\d+)")


@dataclass(frozen=True, slots=True)
class ThrottleFlags:
    """The decoded ``get_throttled`` word: four "now" flags and their "occurred" twins."""

    raw: int
    under_voltage: bool
    freq_capped: bool
    throttled: bool
    soft_temp_limit: bool
    under_voltage_occurred: bool
    freq_capped_occurred: bool
    throttled_occurred: bool
    soft_temp_limit_occurred: bool

    @classmethod
    def from_word(cls, raw: int) -> ThrottleFlags:
        flags: dict[str, bool] = {}
        for name, bit in _NOW_BITS.items():
            flags[name] = bool(raw >> bit & 1)
            flags[f"{name}_occurred"] = bool(raw >> (bit + _SINCE_BOOT_OFFSET) & 1)
        return cls(raw=raw, **flags)

    def active(self) -> tuple[str, ...]:
        """Names of the conditions in force right now (not the historic ones)."""
        return tuple(name for name in _NOW_BITS if getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["raw"] = hex(self.raw)
        return out


def parse_get_throttled(output: str) -> int | None:
    """The word from vcgencmd's answer (``throttled=0x50005``), or None."""
    match = _ANSWER.search(output)
    return int(match.group(1), 0) if match else None


async def read_throttled(
    command: Sequence[str] = GET_THROTTLED, *, timeout_s: float = 2.0
) -> ThrottleFlags | None:
    """Run vcgencmd and decode its answer; None when it is absent or fails.

    The timeout matters: a wedged firmware mailbox can leave vcgencmd
    hanging, and health sampling must never hang with it.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.debug("cannot run %s: %s", command[0], exc)
        return None
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        log.debug("%s gave no answer within %.1f s", " ".join(command), timeout_s)
        return None
    finally:
        # On a timeout or a cancelled sample, leave no vcgencmd behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode("ascii", "replace")
    word = parse_get_throttled(text)
    if proc.returncode != 0 or word is None:
        log.debug(
            "%s failed (exit %s): %r %r",
            " ".join(command),
            proc.returncode,
            text[:80],
            stderr.decode("ascii", "replace")[:80],
        )
        return None
    return ThrottleFlags.from_word(word)
