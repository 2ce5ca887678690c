"""Which key may speak for which device: the fleet CA's word, cached.

Certificates arrive in births; once one checks out against the CA, the
subject's verify key is kept so every later envelope from that device is a
dictionary look-up plus one Ed25519 verification.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import EnvelopeRejected
from agent.identity.certificate import Certificate, verify_certificate
from agent.wire.envelope import EXPIRED, UNKNOWN_KEY


class TrustStore:
    """Certificates this device has verified, by subject.

    >>> trust = TrustStore(ca_public, fleet="lab", now_ms=clock)   # doctest: +SKIP
    >>> trust.learn(cert_dict_from_a_birth)                         # doctest: +SKIP
    """

    def __init__(self, ca_public: bytes, *, fleet: str, now_ms: Callable[[], int]):
        self.ca_public = ca_public
        self.fleet = fleet
        self._now_ms = now_ms
        self._certs: dict[str, Certificate] = {}
        self._keys: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._certs)

    def certificate(self, subject: str) -> Certificate | None:
        return self._certs.get(subject)

    def learn(self, cert: Certificate | dict) -> Certificate:
        """Verify ``cert`` against the CA and remember it (raises CertificateInvalid)."""
        if isinstance(cert, dict):
            cert = Certificate.from_dict(cert)
        known = self._certs.get(cert.subject)
        if known is not None and known.signature == cert.signature:
            return known
        verify_certificate(cert, self.ca_public, self._now_ms(), fleet=self.fleet)
        self._certs[cert.subject] = cert
        self._keys[cert.subject] = cert.sign_key
        return cert

    def verify_key(self, subject: str) -> bytes:
        """The Ed25519 public key that signs for ``subject``; refuses unknown and expired ones."""
        key = self._keys.get(subject)
        if key is None:
            raise EnvelopeRejected(UNKNOWN_KEY, f"no certificate known for {subject!r}")
        if not self._certs[subject].is_valid_at(self._now_ms()):
            raise EnvelopeRejected(EXPIRED, f"certificate of {subject!r} has expired")
        return key
