"""Device and operator certificates signed by the fleet CA.

A certificate is canonical JSON (the same encoder as envelopes) carrying the
subject's Ed25519 verify key and X25519 box key, its role, groups,
capabilities and validity window, plus the CA's Ed25519 signature. It rides
in every birth message, so any device can check a peer against the CA key
it holds without asking anyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import nacl.exceptions
import nacl.signing

from agent.compat import b64url_decode, b64url_encode, canonical_json, sha256
from agent.errors import CertificateInvalid, TopicInvalid
from agent.wire import check_name

ROLES = ("device", "operator", "scheduler")
CERT_VERSION = 1


def key_id(verify_key: bytes) -> str:
    """A short, stable name for a public key (first 8 bytes of its SHA-256)."""
    return b64url_encode(sha256(verify_key)[:8])


@dataclass(frozen=True, slots=True)
class Certificate:
    """What the CA vouches for about one device or operator."""

    subject: str
    role: str
    fleet: str
    sign_key: bytes
    box_key: bytes
    not_before_ms: int
    not_after_ms: int
    issuer: str
    serial: str
    groups: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    signature: bytes = field(default=b"", repr=False)

    def unsigned_dict(self) -> dict[str, Any]:
        return {
            "v": CERT_VERSION,
            "subject": self.subject,
            "role": self.role,
            "fleet": self.fleet,
            "sign_key": b64url_encode(self.sign_key),
            "box_key": b64url_encode(self.box_key),
            "not_before": self.not_before_ms,
            "not_after": self.not_after_ms,
            "issuer": self.issuer,
            "serial": self.serial,
            "groups": list(self.groups),
            "caps": list(self.caps),
        }

    def signing_bytes(self) -> bytes:
        return canonical_json(self.unsigned_dict())

    def to_dict(self) -> dict[str, Any]:
        d = self.unsigned_dict()
        d["sig"] = b64url_encode(self.signature)
        return d

    @classmethod
    def from_dict(cls, d: object) -> Certificate:
        """Parse a certificate; any structural problem is :class:`CertificateInvalid`."""
        if not isinstance(d, dict):
            raise CertificateInvalid("certificate must be a JSON object")
        try:
            if d["v"] != CERT_VERSION:
                raise CertificateInvalid(f"certificate version {d['v']!r} is not supported")
            groups = tuple(d.get("groups", ()))
            caps = tuple(d.get("caps", ()))
            if not all(isinstance(x, str) for x in groups + caps):
                raise CertificateInvalid("certificate groups and caps must be strings")
            cert = cls(
                subject=check_name(d["subject"], "subject"),
                role=str(d["role"]),
                fleet=str(d["fleet"]),
                sign_key=b64url_decode(d["sign_key"]),
                box_key=b64url_decode(d["box_key"]),
                not_before_ms=int(d["not_before"]),
                not_after_ms=int(d["not_after"]),
                issuer=str(d["issuer"]),
                serial=str(d["serial"]),
                groups=groups,
                caps=caps,
                signature=b64url_decode(d["sig"]),
            )
        except CertificateInvalid:
            raise
        except (KeyError, TypeError, ValueError, TopicInvalid) as exc:
            raise CertificateInvalid(f"malformed certificate: {exc!r}") from None
        if cert.role not in ROLES:
            raise CertificateInvalid(f"unknown role {cert.role!r}; expected one of {ROLES}")
        if len(cert.sign_key) != 32 or len(cert.box_key) != 32:
            raise CertificateInvalid("certificate keys must be 32 bytes")
        return cert

    def is_valid_at(self, now_ms: int) -> bool:
        return self.not_before_ms <= now_ms < self.not_after_ms


def sign_certificate(cert: Certificate, ca_key: nacl.signing.SigningKey) -> Certificate:
    """Return ``cert`` with the CA's signature (the CA's own job, off-device)."""
    unsigned = replace(cert, issuer=key_id(bytes(ca_key.verify_key)), signature=b"")
    return replace(unsigned, signature=ca_key.sign(unsigned.signing_bytes()).signature)


def verify_certificate(
    cert: Certificate,
    ca_public: bytes,
    now_ms: int,
    *,
    role: str | None = None,
    fleet: str | None = None,
) -> Certificate:
    """Check signature, issuer, validity window and (optionally) role and fleet.

    Raises :class:`CertificateInvalid` saying which check failed.
    """
    if cert.issuer != key_id(ca_public):
        raise CertificateInvalid(
            f"certificate of {cert.subject!r} was issued by CA {cert.issuer}, "
            f"not by this fleet's CA {key_id(ca_public)}"
        )
    try:
        nacl.signing.VerifyKey(ca_public).verify(cert.signing_bytes(), cert.signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise CertificateInvalid(
            f"certificate of {cert.subject!r} has a bad CA signature"
        ) from None
    if now_ms < cert.not_before_ms:
        raise CertificateInvalid(f"certificate of {cert.subject!r} is not valid yet")
    if now_ms >= cert.not_after_ms:
        raise CertificateInvalid(f"certificate of {cert.subject!r} has expired")
    if role is not None and cert.role != role:
        raise CertificateInvalid(
            f"{cert.subject!r} has role {cert.role!r}, this needs {role!r}"
        )
    if fleet is not None and cert.fleet != fleet:
        raise CertificateInvalid(
            f"{cert.subject!r} belongs to fleet {cert.fleet!r}, not {fleet!r}"
        )
    return cert
