"""The signed statement inside a bundle: what it holds and where it may be installed.

The manifest is what the operator signs (as canonical JSON), so everything
a device decides on (version, targets, the oldest version it may replace,
every file's digest and size) is in it, and nothing a device decides on is
outside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from agent.errors import ConfigInvalid
from agent.suggest import close_match
from firmware_tools.errors import BundleRejected
from firmware_tools.version import parse_version

FORMAT = 1
ANY_TARGET = "*"
PAYLOAD_DIR = "payload"
# A payload path is one plain file name under payload/: no directories, so no traversal.
_PAYLOAD_PATH = re.compile(PAYLOAD_DIR + r"/[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,199}")
_TARGET = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_FILE_KEYS = ("path", "sha256", "size")
_REQUIRED = ("format", "version", "min_version", "targets", "created_ms", "signer", "wheel",
             "files")
_OPTIONAL = ("config",)


@dataclass(frozen=True, slots=True)
class BundleFile:
    """One payload file: its path inside the bundle, SHA-256 (hex) and size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a bundle is and where it fits; :func:`~firmware_tools.bundle.verify_bundle` returns it.

    ``targets`` is ``("*",)`` for a bundle that fits every target profile;
    ``min_version`` is the oldest version the bundle may replace (``0.0.0``:
    any); ``config`` is the path of the bundled ``agent.toml`` or ``None``.
    """

    version: str
    min_version: str
    targets: tuple[str, ...]
    created_ms: int
    signer: str
    wheel: str
    files: tuple[BundleFile, ...]
    config: str | None = None
    format: int = FORMAT

    def fits(self, target: str) -> bool:
        """Whether a device running target profile ``target`` may install this bundle."""
        return ANY_TARGET in self.targets or target in self.targets

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format, "version": self.version, "min_version": self.min_version,
            "targets": list(self.targets), "created_ms": self.created_ms,
            "signer": self.signer, "wheel": self.wheel,
            "files": [f.to_dict() for f in self.files],
        }
        if self.config is not None:
            out["config"] = self.config
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Check and parse a manifest; every problem is ``BundleRejected("bad-manifest")``."""
        _check_keys(data, _REQUIRED, _OPTIONAL, "manifest")
        if data["format"] != FORMAT:
            _bad(f"format {data['format']!r} is not supported (this tool reads {FORMAT})")
        for key in ("version", "min_version"):
            try:
                parse_version(data[key], f"manifest {key}")
            except ConfigInvalid as exc:
                _bad(str(exc))
        targets = data["targets"]
        if not (isinstance(targets, list) and targets
                and all(t == ANY_TARGET or (isinstance(t, str) and _TARGET.fullmatch(t))
                        for t in targets)):
            _bad(f"targets must be a non-empty list of profile names or '*', got {targets!r}")
        created = data["created_ms"]
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            _bad(f"created_ms must be a non-negative integer, got {created!r}")
        if not isinstance(data["signer"], str) or not data["signer"]:
            _bad(f"signer must be a device id, got {data['signer']!r}")
        files = _parse_files(data["files"])
        paths = {f.path for f in files}
        wheel, config = data["wheel"], data.get("config")
        if wheel not in paths or not wheel.endswith(".whl"):
            _bad(f"wheel {wheel!r} must be a listed .whl file")
        if config is not None and config not in paths:
            _bad(f"config {config!r} must be a listed file")
        return cls(version=data["version"], min_version=data["min_version"],
                   targets=tuple(targets), created_ms=created, signer=data["signer"],
                   wheel=wheel, files=files, config=config)


def payload_path(name: str) -> str:
    """Where a payload file named ``name`` sits in a bundle; refuses unsafe names."""
    path = f"{PAYLOAD_DIR}/{name}"
    if not _PAYLOAD_PATH.fullmatch(path):
        raise ConfigInvalid(
            f"file name {name!r} cannot go into a bundle; use letters, digits and '._+-' "
            "(as wheel names do), not starting with '.'"
        )
    return path


def _parse_files(raw: Any) -> tuple[BundleFile, ...]:
    if not isinstance(raw, list) or not raw:
        _bad(f"files must be a non-empty list, got {raw!r}")
    files = []
    for entry in raw:
        _check_keys(entry, _FILE_KEYS, (), "manifest file entry")
        path, digest, size = entry["path"], entry["sha256"], entry["size"]
        if not isinstance(path, str) or not _PAYLOAD_PATH.fullmatch(path):
            _bad(f"file path {path!r} is not a plain name under {PAYLOAD_DIR}/")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            _bad(f"sha256 of {path!r} must be 64 lowercase hex digits, got {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            _bad(f"size of {path!r} must be a non-negative integer, got {size!r}")
        files.append(BundleFile(path, digest, size))
    if len({f.path for f in files}) != len(files):
        _bad("a file is listed twice")
    return tuple(files)


def _check_keys(data: Any, required: tuple[str, ...], optional: tuple[str, ...],
                what: str) -> None:
    if not isinstance(data, dict):
        _bad(f"{what} must be a JSON object, got {type(data).__name__}")
    known = required + optional
    for key in data:
        if key not in known:
            close = close_match(str(key), known)
            hint = f"; did you mean {close!r}?" if close else f"; known: {', '.join(known)}"
            _bad(f"unknown key {key!r} in the {what}{hint}")
    missing = [key for key in required if key not in data]
    if missing:
        _bad(f"{what} lacks {', '.join(missing)}")


def _bad(detail: str) -> NoReturn:
    raise BundleRejected("bad-manifest", detail)
