"""Enrollment: give an agent root its keys, a CA-signed certificate and the CA key.

This is the contract provisioning calls (``igris enroll``, Ansible, the
first-boot image). Re-enrolling a root keeps its keys and renews the
certificate, so a device's identity survives certificate renewal.
"""

from __future__ import annotations

import json
from pathlib import Path

import nacl.public
import nacl.signing

from agent.compat import b64url_encode, random_bytes
from agent.identity.ca import FleetCa
from agent.identity.certificate import Certificate
from agent.identity.keyfiles import read_key, write_key
from agent.identity.layout import RootLayout


def _load_or_make_key(path: Path) -> bytes:
    if path.exists():
        return read_key(path)
    seed = random_bytes(32)
    write_key(path, seed)
    return seed


def enroll(
    root: Path,
    ca: FleetCa,
    device_id: str,
    *,
    now_ms: int,
    role: str = "device",
    groups: tuple[str, ...] = (),
    caps: tuple[str, ...] = (),
    days: int = 365,
) -> Certificate:
    """Write keys (if absent), a certificate and ``ca.pub`` into ``root``."""
    layout = RootLayout(root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    sign_seed = _load_or_make_key(layout.sign_key)
    box_seed = _load_or_make_key(layout.box_key)
    cert = ca.issue(
        device_id,
        role=role,
        sign_key=bytes(nacl.signing.SigningKey(sign_seed).verify_key),
        box_key=bytes(nacl.public.PrivateKey(box_seed).public_key),
        now_ms=now_ms,
        days=days,
        groups=groups,
        caps=caps,
    )
    tmp = layout.certificate.with_name("cert.json.tmp")
    tmp.write_text(json.dumps(cert.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(layout.certificate)
    layout.ca_public.write_text(b64url_encode(ca.public_key) + "\n")
    return cert
