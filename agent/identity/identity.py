"""A device's own identity: its keys, its certificate and the CA it trusts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings
import nacl.public
import nacl.signing
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _sodium

from agent.compat import b64url_encode, hmac_sha256
from agent.errors import CertificateInvalid, NotEnrolled
from agent.identity.ca import read_public_key
from agent.identity.certificate import Certificate, key_id, verify_certificate
from agent.identity.keyfiles import read_key
from agent.identity.layout import RootLayout

_SIG_BYTES = nacl.bindings.crypto_sign_BYTES
PAIR_KEY_LABEL = b"igris pair mac v1"
"""What separates :meth:`Identity.pair_key` from any other use of the shared secret."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Everything this device needs to sign, seal and verify.

    >>> ident = Identity.load(Path("/var/lib/igris"))   # doctest: +SKIP
    >>> sig = ident.sign(b"hello")                       # doctest: +SKIP
    """

    certificate: Certificate
    signing_key: nacl.signing.SigningKey
    box_key: nacl.public.PrivateKey
    ca_public: bytes
    # libsodium's 64-byte secret key, derived once: signing through the bindings
    # skips PyNaCl's wrapper objects, about 5 % of each envelope's cost.
    _secret: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _, secret = nacl.bindings.crypto_sign_seed_keypair(bytes(self.signing_key))
        object.__setattr__(self, "_secret", secret)

    @property
    def device_id(self) -> str:
        return self.certificate.subject

    @property
    def role(self) -> str:
        return self.certificate.role

    @property
    def fleet(self) -> str:
        return self.certificate.fleet

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message`` (64 bytes).

        Every message this device sends is signed here, so it calls
        libsodium through PyNaCl's own cffi module (``nacl._sodium``, what
        ``nacl.bindings`` wraps) and skips the wrapper's length checks and
        copies: 0.3-0.4 us of a 13.5 us signature. A buffer per call keeps it
        safe from any thread.
        """
        signed = _ffi.new("unsigned char[]", len(message) + _SIG_BYTES)
        if _sodium.crypto_sign(signed, _ffi.NULL, message, len(message), self._secret):
            raise RuntimeError("libsodium crypto_sign failed")
        return _ffi.buffer(signed, _SIG_BYTES)[:]

    def pair_key(self, their_box_key: bytes) -> bytes:
        """A 32-byte MAC key that only this device and the holder of ``their_box_key``
        can compute.

        X25519 of our box secret with their box public key (both come in
        certificates the fleet CA signed), hashed by libsodium into a
        ``crypto_box`` key, then through HMAC with :data:`PAIR_KEY_LABEL` so it
        serves this one purpose. Both sides get the same key. Replies to a
        caller that asks for them are MACed under it (docs/bus.md): the broker
        still cannot forge them, and an HMAC costs a small fraction of an
        Ed25519 signature and its check.
        """
        shared = nacl.bindings.crypto_box_beforenm(their_box_key, bytes(self.box_key))
        return hmac_sha256(shared, PAIR_KEY_LABEL)

    def public_summary(self) -> dict[str, object]:
        """What ``igris keys show`` prints: public material only."""
        cert = self.certificate
        return {
            "device_id": cert.subject,
            "role": cert.role,
            "fleet": cert.fleet,
            "groups": list(cert.groups),
            "caps": list(cert.caps),
            "sign_key": b64url_encode(cert.sign_key),
            "sign_key_id": key_id(cert.sign_key),
            "box_key": b64url_encode(cert.box_key),
            "ca_key_id": key_id(self.ca_public),
            "not_before_ms": cert.not_before_ms,
            "not_after_ms": cert.not_after_ms,
            "serial": cert.serial,
        }

    @classmethod
    def load(cls, root: Path, *, now_ms: int | None = None) -> Identity:
        """Load and cross-check the files ``igris enroll`` wrote into ``root``.

        With ``now_ms`` the certificate's validity window is checked too.
        """
        layout = RootLayout(root)
        if not layout.is_enrolled():
            raise NotEnrolled(
                f"{str(root)!r} holds no certificate; enroll it with: "
                f"igris enroll --root {root} --ca CA_DIR --device-id ID"
            )
        try:
            cert = Certificate.from_dict(json.loads(layout.certificate.read_text()))
        except ValueError as exc:
            raise CertificateInvalid(f"{str(layout.certificate)!r}: {exc}") from None
        signing_key = nacl.signing.SigningKey(read_key(layout.sign_key))
        box_key = nacl.public.PrivateKey(read_key(layout.box_key))
        ca_public = read_public_key(layout.ca_public)
        if bytes(signing_key.verify_key) != cert.sign_key:
            raise CertificateInvalid(
                f"{str(layout.sign_key)!r} does not match the key in {str(layout.certificate)!r}"
            )
        if bytes(box_key.public_key) != cert.box_key:
            raise CertificateInvalid(
                f"{str(layout.box_key)!r} does not match the key in {str(layout.certificate)!r}"
            )
        if now_ms is not None:
            verify_certificate(cert, ca_public, now_ms)
        return cls(cert, signing_key, box_key, ca_public)
