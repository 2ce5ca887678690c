"""Lite (MicroPython) devices' keys: made at enrollment, held by the board and its gateway.

A lite device cannot carry an Ed25519 certificate chain cheaply, so it
authenticates with HMAC-SHA256 under a random 32-byte key of its own
(``docs/lite.md``). ``igris enroll --lite`` writes two files, both 0600:

* ``ROOT/config.json``: the board's configuration, key included, which
  ``igris-fw micropython bundle`` copies to the board;
* ``GATEWAY_ROOT/lite/<device>.json``: the record the gateway reads to check
  that device's MACs (its ``[gateway] lite_dir``). The gateway looks the file
  up when the device first speaks, so enrolling needs no gateway restart, and
  enrolling again (a new key) takes effect at the device's next message.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.compat import b64url_decode, b64url_encode, random_bytes
from agent.errors import ConfigInvalid, KeyFileInvalid
from agent.identity.keyfiles import KEY_BYTES, write_secret
from agent.wire import check_name

LITE_DIR = "lite"
"""The records' directory under a gateway's root (``[gateway] lite_dir = "lite"``)."""
CONFIG_NAME = "config.json"


@dataclass(frozen=True, slots=True)
class LiteRecord:
    """What a gateway knows of one lite device: who it is and its MAC key."""

    device_id: str
    fleet: str
    gateway: str
    key: bytes
    created_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "fleet": self.fleet, "gateway": self.gateway,
                "key": b64url_encode(self.key), "created_ms": self.created_ms}


@dataclass(frozen=True, slots=True)
class LiteEnrollment:
    """Where ``enroll_lite`` wrote the board's config and the gateway's record."""

    record: LiteRecord
    config_path: Path
    record_path: Path | None


def lite_config(record: LiteRecord, *, broker_host: str, broker_port: int = 1883,
                topic_prefix: str = "igris", pins: dict[str, int] | None = None,
                writable: tuple[str, ...] = (), heartbeat_s: float = 10.0,
                telemetry_s: float = 30.0) -> dict[str, Any]:
    """The board's ``config.json`` (checked again on the board by ``check_config``)."""
    pins = dict(pins or {})
    for name, gpio in pins.items():
        check_name(name, "pin name")
        if gpio < 0:
            raise ConfigInvalid(f"pin {name!r}: GPIO number {gpio} must not be negative")
    for name in writable:
        if name not in pins:
            raise ConfigInvalid(f"writable pin {name!r} is not among the pins "
                                 f"({', '.join(sorted(pins)) or 'none'}); add it with --pin "
                                 f"{name}=GPIO")
    return {"device_id": record.device_id, "fleet": record.fleet, "gateway": record.gateway,
            "key": b64url_encode(record.key),
            "broker": {"host": broker_host, "port": broker_port},
            "topic_prefix": topic_prefix, "pins": pins, "writable": list(writable),
            "heartbeat_s": heartbeat_s, "telemetry_s": telemetry_s}


def enroll_lite(root: Path, *, device_id: str, fleet: str, gateway: str, now_ms: int,
                gateway_root: Path | None = None, **board: Any) -> LiteEnrollment:
    """Make a new key for ``device_id``; write the board's config and the gateway's record.

    ``board`` holds :func:`lite_config`'s settings (broker, pins, timings).
    Enrolling again makes a new key: the old one stops working at the gateway
    as soon as the new record is written.
    """
    check_name(device_id, "device id")
    check_name(fleet, "fleet")
    check_name(gateway, "gateway id")
    record = LiteRecord(device_id, fleet, gateway, random_bytes(KEY_BYTES), now_ms)
    config = lite_config(record, **board)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = root / CONFIG_NAME
    write_secret(config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    record_path = None
    if gateway_root is not None:
        record_path = record_path_for(gateway_root / LITE_DIR, device_id)
        write_secret(record_path, (json.dumps(record.to_dict(), sort_keys=True) + "\n").encode())
    return LiteEnrollment(record, config_path, record_path)


def record_path_for(directory: Path, device_id: str) -> Path:
    return directory / (check_name(device_id, "device id") + ".json")


def read_lite_record(path: Path) -> LiteRecord:
    """Read a record written by :func:`enroll_lite`; refuse one others can read."""
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileInvalid(f"lite record {str(path)!r} has mode "
                             f"{stat.S_IMODE(st.st_mode):04o}; others may read the key. "
                             f"Fix with: chmod 600 {path}")
    try:
        data = json.loads(path.read_text())
        record = LiteRecord(str(data["device_id"]), str(data["fleet"]), str(data["gateway"]),
                            b64url_decode(data["key"]), int(data["created_ms"]))
    except (ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise KeyFileInvalid(f"lite record {str(path)!r} is not one 'igris enroll --lite' "
                             f"writes ({type(exc).__name__}: {exc}); enroll the device "
                             "again") from None
    if len(record.key) != KEY_BYTES or path.name != record.device_id + ".json":
        raise KeyFileInvalid(f"lite record {str(path)!r} holds a {len(record.key)}-byte key "
                             f"for {record.device_id!r}; enroll the device again")
    return record

