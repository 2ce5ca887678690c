"""Certificates first seen: each one goes into the ledger once, not once per restart.

The trust store starts empty on every run and learns certificates again from
births and operators' messages, so "first seen" is decided against the
ledger itself: the serials already recorded are read back at start.
"""

from __future__ import annotations

import json

from agent.identity.certificate import Certificate, key_id
from agent.security_mesh.ledger import Ledger

KIND = "cert"


class CertificateLog:
    """Record each new certificate (by issuer and serial) in the ledger exactly once."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        rows = ledger.db.conn.execute("SELECT body FROM ledger WHERE kind = ?", (KIND,))
        self._seen = {_name(json.loads(body)) for (body,) in rows}

    def __call__(self, cert: Certificate) -> None:
        body = {
            "subject": cert.subject, "role": cert.role, "serial": cert.serial,
            "issuer": cert.issuer, "key_id": key_id(cert.sign_key),
            "groups": list(cert.groups), "not_after": cert.not_after_ms,
        }
        name = _name(body)
        if name not in self._seen:
            self.ledger.append(KIND, body)
            self._seen.add(name)


def _name(body: dict) -> tuple[str, str]:
    return str(body.get("issuer")), str(body.get("serial"))
