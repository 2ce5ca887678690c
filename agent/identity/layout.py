"""Where identity files live under an agent root (one place, so Ansible,
first-boot tooling and the agent agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RootLayout:
    """Paths of the files ``igris enroll`` writes into an agent root."""

    root: Path

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def sign_key(self) -> Path:
        return self.keys_dir / "sign.key"

    @property
    def box_key(self) -> Path:
        return self.keys_dir / "box.key"

    @property
    def certificate(self) -> Path:
        return self.root / "cert.json"

    @property
    def ca_public(self) -> Path:
        return self.root / "ca.pub"

    @property
    def dev_ca(self) -> Path:
        """The development CA ``igris run`` makes when nothing was enrolled."""
        return self.root / "dev-ca"

    def is_enrolled(self) -> bool:
        return self.certificate.exists()
