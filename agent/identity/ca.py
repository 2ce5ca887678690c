"""The fleet CA: an Ed25519 key kept off the devices that signs certificates.

``igris ca init DIR`` makes one; provisioning (Ansible, first-boot tooling)
and ``igris enroll`` use it. Only the public half (``ca.pub``) ever reaches a
device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from agent.compat import b64url_decode, b64url_encode, random_bytes
from agent.errors import CaError, CertificateInvalid
from agent.identity.certificate import ROLES, Certificate, sign_certificate
from agent.identity.keyfiles import read_key, write_key
from agent.wire import check_name

CA_KEY = "ca.key"
CA_PUB = "ca.pub"
CA_META = "ca.json"
DAY_MS = 86_400_000


def read_public_key(path: Path) -> bytes:
    """Read a ``ca.pub`` file (base64url text of the 32-byte verify key)."""
    try:
        key = b64url_decode(path.read_text().strip())
    except FileNotFoundError:
        raise CaError(f"CA public key {str(path)!r} is missing") from None
    except (ValueError, UnicodeError) as exc:
        raise CaError(f"CA public key {str(path)!r} is not base64url text: {exc}") from None
    if len(key) != 32:
        raise CaError(f"CA public key {str(path)!r} holds {len(key)} bytes, expected 32")
    return key


@dataclass(frozen=True, slots=True)
class FleetCa:
    """A loaded fleet CA, able to issue certificates."""

    directory: Path
    fleet: str
    signing_key: nacl.signing.SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @classmethod
    def init(cls, directory: Path, fleet: str) -> FleetCa:
        """Create a new CA in ``directory``; refuses to overwrite an existing one."""
        check_name(fleet, "fleet")
        if (directory / CA_KEY).exists():
            raise CaError(
                f"{str(directory / CA_KEY)!r} already exists; a fleet CA is made once "
                "(every certificate depends on it). Use another directory."
            )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed = random_bytes(32)
        write_key(directory / CA_KEY, seed)
        key = nacl.signing.SigningKey(seed)
        (directory / CA_PUB).write_text(b64url_encode(bytes(key.verify_key)) + "\n")
        (directory / CA_META).write_text(json.dumps({"fleet": fleet}, indent=2) + "\n")
        return cls(directory, fleet, key)

    @classmethod
    def load(cls, directory: Path) -> FleetCa:
        """Load the CA in ``directory`` (made by :meth:`init`)."""
        if not (directory / CA_KEY).exists():
            raise CaError(
                f"no fleet CA in {str(directory)!r}; make one with: igris ca init {directory}"
            )
        key = nacl.signing.SigningKey(read_key(directory / CA_KEY))
        try:
            fleet = json.loads((directory / CA_META).read_text())["fleet"]
        except (OSError, ValueError, KeyError) as exc:
            raise CaError(f"{str(directory / CA_META)!r} is unreadable: {exc}") from None
        if read_public_key(directory / CA_PUB) != bytes(key.verify_key):
            raise CaError(f"{str(directory / CA_PUB)!r} does not match {CA_KEY}")
        return cls(directory, fleet, key)

    def issue(
        self,
        subject: str,
        *,
        role: str,
        sign_key: bytes,
        box_key: bytes,
        now_ms: int,
        days: int = 365,
        groups: tuple[str, ...] = (),
        caps: tuple[str, ...] = (),
    ) -> Certificate:
        """Sign a certificate for ``subject`` valid from now for ``days`` days."""
        check_name(subject, "device id")
        if subject == "all":
            raise CertificateInvalid("device id 'all' is reserved: cmd/all reaches every device")
        for group in groups:
            check_name(group, "group")
        if role not in ROLES:
            raise CertificateInvalid(f"unknown role {role!r}; expected one of {ROLES}")
        if days <= 0:
            raise CertificateInvalid(f"--days must be positive, got {days}")
        cert = Certificate(
            subject=subject,
            role=role,
            fleet=self.fleet,
            sign_key=sign_key,
            box_key=box_key,
            # A minute of slack for devices whose clock lags the controller's.
            not_before_ms=now_ms - 60_000,
            not_after_ms=now_ms + days * DAY_MS,
            issuer="",
            serial=b64url_encode(random_bytes(12)),
            groups=tuple(groups),
            caps=tuple(caps),
        )
        return sign_certificate(cert, self.signing_key)
