"""Which key may speak for which device: the fleet CA's word, cached.

Certificates arrive in births (and in operators' policy and block messages);
once one checks out against a trusted CA, the subject's verify key is kept
so every later envelope from that device is a dictionary look-up plus one
Ed25519 verification.

Two things can withdraw that trust later, and both are checked on every
look-up, so they take effect at once without re-verifying anything:

- **CA rotation.** The store trusts a set of CA keys (anchors), each with an
  optional end of trust. During a rotation devices trust the old and the new
  CA; when the old one's window ends, certificates it issued stop verifying.
- **The blocklist.** Device ids and key ids the fleet's operators blocked
  (``agent/security_mesh/blocklist.py`` keeps the list and pushes it here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent.errors import CertificateInvalid, EnvelopeRejected
from agent.identity.certificate import Certificate, key_id, verify_certificate
from agent.wire.envelope import BLOCKED, EXPIRED, UNKNOWN_KEY


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A CA key this device trusts, until ``until_ms`` (wall ms) if given.

    >>> TrustAnchor(new_ca_public)                                # doctest: +SKIP
    >>> TrustAnchor(old_ca_public, until_ms=1_790_000_000_000)     # doctest: +SKIP
    """

    key: bytes
    until_ms: int | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def is_valid_at(self, now_ms: int) -> bool:
        return self.until_ms is None or now_ms < self.until_ms


def verify_chain(
    cert: Certificate,
    anchors: Iterable[TrustAnchor],
    now_ms: int,
    *,
    fleet: str | None = None,
) -> TrustAnchor:
    """Check that a CA in ``anchors``, trusted at ``now_ms``, issued ``cert``.

    Then the signature, the validity window and (if given) the fleet are
    checked as :func:`verify_certificate` does. Returns the issuing anchor;
    raises :class:`CertificateInvalid` saying which check failed.
    """
    by_id = {anchor.key_id: anchor for anchor in anchors}
    anchor = by_id.get(cert.issuer)
    if anchor is None:
        raise CertificateInvalid(
            f"certificate of {cert.subject!r} was issued by CA {cert.issuer}, "
            f"which this device does not trust (trusted: {', '.join(by_id) or 'none'})"
        )
    if not anchor.is_valid_at(now_ms):
        raise CertificateInvalid(
            f"certificate of {cert.subject!r} was issued by CA {cert.issuer}, trusted "
            f"only until {anchor.until_ms} ms (CA rotation ended); re-enroll it with the new CA"
        )
    verify_certificate(cert, anchor.key, now_ms, fleet=fleet)
    return anchor


class TrustStore:
    """Certificates this device has verified, by subject, and who is blocked.

    >>> trust = TrustStore(ca_public, fleet="lab", now_ms=clock)   # doctest: +SKIP
    >>> trust.learn(cert_dict_from_a_birth)                         # doctest: +SKIP
    >>> trust.set_anchors([TrustAnchor(new_ca), TrustAnchor(old_ca, until_ms=t)])  # doctest: +SKIP
    >>> trust.set_blocked({"pi-07": None}, {})                      # doctest: +SKIP
    """

    def __init__(self, ca_public: bytes, *, fleet: str, now_ms: Callable[[], int]):
        self.fleet = fleet
        self._now_ms = now_ms
        self._anchors: dict[str, TrustAnchor] = {}
        self._certs: dict[str, Certificate] = {}
        self._keys: dict[str, bytes] = {}
        self._key_ids: dict[str, str] = {}
        self._blocked_devices: dict[str, int | None] = {}
        self._blocked_keys: dict[str, int | None] = {}
        # Called with each certificate the first time it checks out (the
        # runtime records it in the ledger: "certificates first seen").
        self.on_learn: Callable[[Certificate], None] | None = None
        self.set_anchors([TrustAnchor(ca_public)])

    def __len__(self) -> int:
        return len(self._certs)

    @property
    def anchors(self) -> tuple[TrustAnchor, ...]:
        return tuple(self._anchors.values())

    def set_anchors(self, anchors: Iterable[TrustAnchor]) -> None:
        """Trust exactly these CA keys from now on (a policy's trust section).

        Certificates already learnt from a CA that is no longer trusted stop
        verifying at the next :meth:`verify_key`.
        """
        by_id = {anchor.key_id: anchor for anchor in anchors}
        if not by_id:
            raise ValueError("a trust store needs at least one CA key")
        self._anchors = by_id

    def set_blocked(
        self, devices: Mapping[str, int | None], keys: Mapping[str, int | None]
    ) -> None:
        """Block these device ids and key ids, each until its expiry (wall ms) or for good.

        Replaces the previous sets. Expiry is checked at every look-up, so a
        block that runs out needs no timer.
        """
        self._blocked_devices = dict(devices)
        self._blocked_keys = dict(keys)

    def is_blocked(self, subject: str) -> bool:
        """True if ``subject``, or the key its known certificate holds, is blocked now."""
        if not self._blocked_devices and not self._blocked_keys:
            return False
        return self._blocked_at(subject, self._now_ms())

    def _blocked_at(self, subject: str, now_ms: int) -> bool:
        return _in_force(self._blocked_devices, subject, now_ms) or _in_force(
            self._blocked_keys, self._key_ids.get(subject), now_ms
        )

    def certificate(self, subject: str) -> Certificate | None:
        return self._certs.get(subject)

    def learn(self, cert: Certificate | dict) -> Certificate:
        """Verify ``cert`` against a trusted CA and remember it (raises CertificateInvalid)."""
        if isinstance(cert, dict):
            cert = Certificate.from_dict(cert)
        known = self._certs.get(cert.subject)
        if known is not None and known.signature == cert.signature:
            return known
        verify_chain(cert, self._anchors.values(), self._now_ms(), fleet=self.fleet)
        self._certs[cert.subject] = cert
        self._keys[cert.subject] = cert.sign_key
        self._key_ids[cert.subject] = key_id(cert.sign_key)
        if self.on_learn is not None:
            self.on_learn(cert)
        return cert

    def verify_key(self, subject: str) -> bytes:
        """The Ed25519 public key that signs for ``subject``.

        Refuses (:class:`EnvelopeRejected`) an unknown subject, a blocked one,
        an expired certificate and one whose CA is no longer trusted.
        """
        key = self._keys.get(subject)
        if key is None:
            raise EnvelopeRejected(UNKNOWN_KEY, f"no certificate known for {subject!r}")
        now = self._now_ms()
        if (self._blocked_devices or self._blocked_keys) and self._blocked_at(subject, now):
            raise EnvelopeRejected(BLOCKED, f"{subject!r} is on the fleet blocklist")
        cert = self._certs[subject]
        if not cert.is_valid_at(now):
            raise EnvelopeRejected(EXPIRED, f"certificate of {subject!r} has expired")
        anchor = self._anchors.get(cert.issuer)
        if anchor is None:
            raise EnvelopeRejected(
                UNKNOWN_KEY, f"CA {cert.issuer} that certified {subject!r} is no longer trusted"
            )
        if not anchor.is_valid_at(now):
            raise EnvelopeRejected(
                EXPIRED, f"trust in CA {cert.issuer} that certified {subject!r} has ended"
            )
        return key


def _in_force(blocked: dict[str, int | None], name: str | None, now_ms: int) -> bool:
    if name is None or name not in blocked:
        return False
    expires = blocked[name]
    return expires is None or now_ms < expires
