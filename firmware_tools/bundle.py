"""Signed OTA bundles: build one on the controller, verify it on a device before installing.

A bundle is a plain POSIX tar (ustar, uncompressed: the wheel inside is
already a zip) holding, in this order::

    manifest.json        the manifest as canonical JSON (see firmware_tools.manifest)
    signature.json       {"sig": Ed25519 over that canonical JSON, "cert": signer's certificate}
    payload/<wheel>      the agent wheel
    payload/agent.toml   optional configuration

Verification follows TUF/Uptane's order: refuse anything unsafe to even
look at (paths, links), then trust (certificate chains to the fleet CA with
the operator role, signature), then policy (target, rollback), and only
then the payload's bytes (size and SHA-256 of every file; no extra file).

>>> manifest = verify_bundle(Path("igris-0.2.0.tar"), ca_public=ca, now_ms=wall_ms(),
...                          target="rpi4", current_version="0.1.0")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, Any

import nacl.exceptions
import nacl.signing

from agent.compat import b64url_decode, b64url_encode, canonical_json
from agent.config.load import CONFIG_NAME, read_toml
from agent.config.schema import build_config
from agent.device import available_profiles
from agent.errors import CertificateInvalid, ConfigInvalid
from agent.identity import Certificate, Identity, key_id, verify_certificate
from agent.suggest import close_match
from firmware_tools.errors import BundleRejected
from firmware_tools.manifest import ANY_TARGET, BundleFile, Manifest, payload_path
from firmware_tools.version import parse_version

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"
SIGNER_ROLE = "operator"
MAX_METADATA_BYTES = 256 * 1024
_CHUNK = 1 << 16
# A wheel file name: distribution-version(-build)?-python-abi-platform.whl (PEP 427).
_WHEEL_NAME = re.compile(
    r"(?P<dist>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-[^-]+)?-[^-]+-[^-]+-[^-]+\.whl"
)


def build_bundle(
    out: Path,
    *,
    signer: Identity,
    version: str,
    wheel: Path,
    now_ms: int,
    config: Path | None = None,
    targets: Iterable[str] = (),
    min_version: str = "0.0.0",
) -> Manifest:
    """Write a bundle signed by ``signer`` (an operator) to ``out``; return its manifest.

    Refuses, before writing anything, what every device would refuse later:
    a signer that is not a currently valid operator, a version that is not
    ``X.Y.Z`` or differs from the wheel's, an unknown target profile, a
    config file the agent would not start with.
    """
    verify_certificate(signer.certificate, signer.ca_public, now_ms, role=SIGNER_ROLE)
    parse_version(version, "--version")
    parse_version(min_version, "--min-version")
    _check_wheel(wheel, version)
    if config is not None:
        build_config([(str(config), read_toml(config))])
    sources = [(payload_path(wheel.name), wheel)]
    if config is not None:
        sources.append((payload_path(CONFIG_NAME), config))
    manifest = Manifest(
        version=version,
        min_version=min_version,
        targets=_check_targets(tuple(targets)),
        created_ms=now_ms,
        signer=signer.device_id,
        wheel=sources[0][0],
        config=sources[1][0] if config is not None else None,
        files=tuple(_describe(path, source) for path, source in sources),
    )
    body = canonical_json(manifest.to_dict())
    signature = canonical_json({"sig": b64url_encode(signer.sign(body)),
                                "cert": signer.certificate.to_dict()})
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            _add_bytes(tar, MANIFEST_NAME, body, now_ms)
            _add_bytes(tar, SIGNATURE_NAME, signature, now_ms)
            for path, source in sources:
                with source.open("rb") as fh:
                    tar.addfile(_member(path, source.stat().st_size, now_ms), fh)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def verify_bundle(
    bundle: Path,
    *,
    ca_public: bytes,
    now_ms: int,
    target: str | None = None,
    current_version: str | None = None,
    allow_downgrade: bool = False,
    extract_to: Path | None = None,
) -> Manifest:
    """Check ``bundle`` against the fleet CA key: its manifest, or :class:`BundleRejected`.

    ``target`` and ``current_version`` are the device's (``None`` skips that
    check, as on a controller). With ``extract_to`` (an empty directory) the
    payload files are written there by their plain names while they are
    hashed, and removed again if any check fails.
    """
    with _open_tar(bundle) as tar:
        try:
            members = _safe_members(tar)
        except tarfile.TarError as exc:
            raise BundleRejected("not-a-bundle", f"{str(bundle)!r} is truncated: {exc}") from None
        cert, signature = _read_signature(tar, members)
        _check_signer(cert, ca_public, now_ms)
        manifest = _read_manifest(tar, members, cert, signature)
        if target is not None and not manifest.fits(target):
            raise BundleRejected(
                "wrong-target",
                f"bundle {manifest.version} fits {', '.join(manifest.targets)}, not {target!r}",
            )
        if current_version is not None:
            _check_rollback(manifest, current_version, allow_downgrade)
        _check_payload(tar, members, manifest, extract_to)
    return manifest


def _open_tar(bundle: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(bundle, "r:")
    except FileNotFoundError:
        raise BundleRejected("not-found", f"no file {str(bundle)!r}") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleRejected("not-a-bundle", f"{str(bundle)!r} is not a tar file: {exc}") from None


def wheel_version(wheel: Path) -> str:
    """The version in a wheel's file name (PEP 427), checked to exist and be ``X.Y.Z``."""
    match = _WHEEL_NAME.fullmatch(wheel.name)
    if match is None:
        raise ConfigInvalid(
            f"--wheel {str(wheel)!r} is not named like a wheel (name-version-py-abi-platform.whl); "
            "build one with: pip wheel --no-deps . -w dist"
        )
    if not wheel.is_file():
        raise ConfigInvalid(f"--wheel {str(wheel)!r} does not exist")
    parse_version(match["version"], f"the version of {wheel.name}")
    return match["version"]


def _check_wheel(wheel: Path, version: str) -> None:
    found = wheel_version(wheel)
    if found != version:
        raise ConfigInvalid(
            f"--version {version!r} differs from the wheel's version {found!r} "
            f"({wheel.name}); a device would report the wheel's"
        )


def _check_targets(targets: tuple[str, ...]) -> tuple[str, ...]:
    if not targets or ANY_TARGET in targets:
        return (ANY_TARGET,)
    shipped = available_profiles()
    for name in targets:
        if name not in shipped:
            close = close_match(name, shipped)
            hint = f"did you mean {close!r}?" if close else f"shipped: {', '.join(shipped)}"
            raise ConfigInvalid(f"--target {name!r} is not a target profile; {hint}")
    return tuple(sorted(set(targets)))


def _describe(path: str, source: Path) -> BundleFile:
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return BundleFile(path, digest.hexdigest(), size)


def _member(name: str, size: int, now_ms: int) -> tarfile.TarInfo:
    # Fixed owner and mode: the bundle's bytes depend only on its content and time.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = now_ms // 1000
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, now_ms: int) -> None:
    tar.addfile(_member(name, len(data), now_ms), io.BytesIO(data))


def _safe_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by name, refusing links, devices, directories and escaping paths."""
    members: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        name = member.name
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ".." in parts or not parts:
            raise BundleRejected("unsafe-path", f"member {name!r} points outside the bundle")
        if not member.isreg():
            kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else (
                "a directory" if member.isdir() else "a special file")
            raise BundleRejected("unsafe-member", f"member {name!r} is {kind}, not a file")
        if name in members:
            raise BundleRejected("duplicate-file", f"member {name!r} appears twice")
        members[name] = member
    return members


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, code: str) -> Any:
    if member.size > MAX_METADATA_BYTES:
        raise BundleRejected(code, f"{member.name} is {member.size} bytes, over "
                                   f"{MAX_METADATA_BYTES}")
    fh: IO[bytes] | None = tar.extractfile(member)
    assert fh is not None  # _safe_members let only regular files through
    try:
        return json.loads(fh.read())
    except ValueError as exc:
        raise BundleRejected(code, f"{member.name} is not JSON: {exc}") from None


def _read_signature(tar: tarfile.TarFile,
                    members: dict[str, tarfile.TarInfo]) -> tuple[Certificate, bytes]:
    if SIGNATURE_NAME not in members:
        raise BundleRejected("unsigned", f"the bundle has no {SIGNATURE_NAME}")
    data = _read_small(tar, members[SIGNATURE_NAME], "bad-signature")
    if not isinstance(data, dict) or set(data) != {"sig", "cert"}:
        raise BundleRejected("bad-signature",
                             f"{SIGNATURE_NAME} must hold exactly 'sig' and 'cert'")
    try:
        signature = b64url_decode(data["sig"])
    except (TypeError, ValueError, UnicodeError):
        signature = b""
    if len(signature) != 64:
        raise BundleRejected("bad-signature", "'sig' is not a base64url Ed25519 signature")
    try:
        return Certificate.from_dict(data["cert"]), signature
    except CertificateInvalid as exc:
        raise BundleRejected("bad-certificate", f"signer certificate: {exc}") from None


def _check_signer(cert: Certificate, ca_public: bytes, now_ms: int) -> None:
    try:
        verify_certificate(cert, ca_public, now_ms, role=SIGNER_ROLE)
    except CertificateInvalid as exc:
        raise BundleRejected(_certificate_code(cert, ca_public, now_ms),
                             f"signer certificate: {exc}") from None


def _certificate_code(cert: Certificate, ca_public: bytes, now_ms: int) -> str:
    """Which of verify_certificate's checks failed, as a countable code."""
    if cert.issuer != key_id(ca_public):
        return "untrusted-signer"
    try:  # issuer and CA signature alone: checked at a time inside the certificate's window
        verify_certificate(cert, ca_public, cert.not_before_ms)
    except CertificateInvalid:
        return "untrusted-signer"
    if now_ms >= cert.not_after_ms:
        return "cert-expired"
    if now_ms < cert.not_before_ms:
        return "cert-not-yet-valid"
    return "not-operator"


def _read_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                   cert: Certificate, signature: bytes) -> Manifest:
    if MANIFEST_NAME not in members:
        raise BundleRejected("bad-manifest", f"the bundle has no {MANIFEST_NAME}")
    data = _read_small(tar, members[MANIFEST_NAME], "bad-manifest")
    try:
        body = canonical_json(data)
    except (TypeError, ValueError) as exc:
        raise BundleRejected("bad-manifest", f"not canonical JSON: {exc}") from None
    try:
        nacl.signing.VerifyKey(cert.sign_key).verify(body, signature)
    except nacl.exceptions.BadSignatureError:
        raise BundleRejected(
            "bad-signature", f"the manifest's signature is not {cert.subject!r}'s"
        ) from None
    manifest = Manifest.from_dict(data)
    if manifest.signer != cert.subject:
        raise BundleRejected("bad-manifest", f"the manifest names signer {manifest.signer!r}, "
                                             f"the certificate is {cert.subject!r}'s")
    return manifest


def _check_rollback(manifest: Manifest, current_version: str, allow_downgrade: bool) -> None:
    current = parse_version(current_version, "current version")
    if current < parse_version(manifest.min_version):
        raise BundleRejected(
            "below-min-version",
            f"bundle {manifest.version} replaces only {manifest.min_version} or later; "
            f"this device runs {current_version} (install an intermediate release first)",
        )
    if parse_version(manifest.version) < current and not allow_downgrade:
        raise BundleRejected(
            "downgrade",
            f"bundle {manifest.version} is older than the running {current_version}; "
            "an operator may allow it explicitly with --allow-downgrade",
        )


def _check_payload(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                   manifest: Manifest, extract_to: Path | None) -> None:
    present = set(members) - {MANIFEST_NAME, SIGNATURE_NAME}
    listed = {f.path for f in manifest.files}
    if present - listed:
        raise BundleRejected("unlisted-file", f"{sorted(present - listed)[0]!r} is not in the "
                                              "signed manifest")
    if listed - present:
        raise BundleRejected("missing-file", f"{sorted(listed - present)[0]!r} is listed but "
                                             "absent")
    try:
        for entry in manifest.files:
            _check_file(tar, members[entry.path], entry, extract_to)
    except BaseException:
        if extract_to is not None:
            for entry in manifest.files:
                (extract_to / PurePosixPath(entry.path).name).unlink(missing_ok=True)
        raise


def _check_file(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: BundleFile,
                extract_to: Path | None) -> None:
    if member.size != entry.size:
        raise BundleRejected("size-mismatch", f"{entry.path!r} is {member.size} bytes, the "
                                              f"manifest says {entry.size}")
    fh = tar.extractfile(member)
    assert fh is not None  # _safe_members let only regular files through
    target = extract_to / PurePosixPath(entry.path).name if extract_to is not None else None
    sink = target.open("wb") if target is not None else None
    digest = hashlib.sha256()
    try:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
    finally:
        if sink is not None:
            sink.close()
    if digest.hexdigest() != entry.sha256:
        raise BundleRejected("digest-mismatch", f"{entry.path!r} does not match its SHA-256 "
                                                "in the manifest (changed after signing)")
