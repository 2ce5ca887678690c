"""The lite devices' MAC keys, read from the records ``igris enroll --lite`` writes.

A record is looked up when its device speaks, and read again when its file
changed (a stat per message), so enrolling a device or giving it a new key
takes effect without restarting the gateway.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.errors import KeyFileInvalid
from agent.identity.lite import LiteRecord, read_lite_record, record_path_for

log = logging.getLogger(__name__)


class LiteKeyring:
    """``key(device) -> bytes | None`` over a directory of lite records.

    >>> ring = LiteKeyring(Path("/var/lib/igris/lite"))   # doctest: +SKIP
    >>> ring.key("esp-01")                                # doctest: +SKIP
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._cache: dict[str, tuple[int, LiteRecord]] = {}
        self.bad_records = 0

    def record(self, device_id: str) -> LiteRecord | None:
        """The device's record, or None if it has none (or a bad one, logged)."""
        path = record_path_for(self.directory, device_id)
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            self._cache.pop(device_id, None)
            return None
        cached = self._cache.get(device_id)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            record = read_lite_record(path)
        except (KeyFileInvalid, OSError) as exc:
            self.bad_records += 1
            log.error("lite device %s not accepted: %s", device_id, exc)
            return None
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[device_id] = (mtime, record)
        return record

    def key(self, device_id: str) -> bytes | None:
        record = self.record(device_id)
        return record.key if record is not None else None

    def enrolled(self) -> list[str]:
        """Every device with a record file (what ``igris status`` counts)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))
