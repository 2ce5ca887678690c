"""Key files under the agent root: written 0600 from the first byte, checked on read.

Keys are raw 32-byte seeds encoded as base64url text (one line), so they
survive copying through Ansible and text tools, and a wrong file is caught
by its length rather than by a confusing crypto error later.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.compat import b64url_decode, b64url_encode
from agent.errors import KeyFileInvalid, NotEnrolled

KEY_BYTES = 32


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600, never wider even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_key(path: Path, seed: bytes) -> None:
    """Store a 32-byte key seed as base64url text, mode 0600."""
    if len(seed) != KEY_BYTES:
        raise KeyFileInvalid(f"refusing to write a {len(seed)}-byte key to {path}")
    write_secret(path, (b64url_encode(seed) + "\n").encode())


def read_key(path: Path) -> bytes:
    """Read a key written by :func:`write_key`; refuse files others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotEnrolled(
            f"key file {str(path)!r} is missing; run 'igris enroll' for this root"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileInvalid(
            f"key file {str(path)!r} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"others may read it. Fix with: chmod 600 {path}"
        )
    try:
        seed = b64url_decode(path.read_text().strip())
    except (ValueError, UnicodeError) as exc:
        raise KeyFileInvalid(f"key file {str(path)!r} is not base64url text: {exc}") from None
    if len(seed) != KEY_BYTES:
        raise KeyFileInvalid(
            f"key file {str(path)!r} holds {len(seed)} bytes, expected {KEY_BYTES}"
        )
    return seed
