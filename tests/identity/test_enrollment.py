"""Fleet CA, enrollment and certificate checks, on real files and real PyNaCl."""

import json
import stat

import nacl.signing
import pytest

from agent.errors import CaError, CertificateInvalid, KeyFileInvalid, NotEnrolled
from agent.identity import Certificate, FleetCa, Identity, RootLayout, enroll, verify_certificate

NOW = 1_800_000_000_000
DAY = 86_400_000


@pytest.fixture
def ca(tmp_path):
    return FleetCa.init(tmp_path / "ca", "lab")


def test_enroll_writes_keys_0600_cert_and_ca_key(tmp_path, ca):
    root = tmp_path / "root"
    cert = enroll(root, ca, "pi-01", now_ms=NOW, groups=("kitchen",), caps=("model:digits",))
    layout = RootLayout(root)
    for key_file in (layout.sign_key, layout.box_key, ca.directory / "ca.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file
    ident = Identity.load(root, now_ms=NOW)
    assert ident.device_id == "pi-01"
    assert ident.fleet == "lab"
    assert ident.certificate == cert
    assert cert.groups == ("kitchen",)
    assert ident.ca_public == ca.public_key
    verify_certificate(cert, ca.public_key, NOW, role="device", fleet="lab")


def test_reenroll_keeps_keys_and_renews_certificate(tmp_path, ca):
    root = tmp_path / "root"
    first = enroll(root, ca, "pi-01", now_ms=NOW, days=1)
    second = enroll(root, ca, "pi-01", now_ms=NOW + DAY, days=30)
    assert first.sign_key == second.sign_key
    assert second.not_after_ms > first.not_after_ms
    assert second.serial != first.serial


def test_certificate_from_another_ca_is_refused(tmp_path, ca):
    other = FleetCa.init(tmp_path / "other", "lab")
    cert = enroll(tmp_path / "root", other, "pi-01", now_ms=NOW)
    with pytest.raises(CertificateInvalid, match="not by this fleet's CA"):
        verify_certificate(cert, ca.public_key, NOW)


def test_tampered_certificate_is_refused(tmp_path, ca):
    cert = enroll(tmp_path / "root", ca, "pi-01", now_ms=NOW)
    d = cert.to_dict()
    d["role"] = "operator"
    with pytest.raises(CertificateInvalid, match="bad CA signature"):
        verify_certificate(Certificate.from_dict(d), ca.public_key, NOW)


def test_validity_window_and_role_are_checked(tmp_path, ca):
    cert = enroll(tmp_path / "root", ca, "op", now_ms=NOW, role="operator", days=2)
    verify_certificate(cert, ca.public_key, NOW + DAY, role="operator")
    with pytest.raises(CertificateInvalid, match="expired"):
        verify_certificate(cert, ca.public_key, NOW + 3 * DAY)
    with pytest.raises(CertificateInvalid, match="not valid yet"):
        verify_certificate(cert, ca.public_key, NOW - DAY)
    with pytest.raises(CertificateInvalid, match="needs 'device'"):
        verify_certificate(cert, ca.public_key, NOW, role="device")


def test_malformed_certificates_give_clear_errors():
    for bad in ([], {"v": 1}, {"v": 2}, {"v": 1, "subject": "a/b"}):
        with pytest.raises(CertificateInvalid):
            Certificate.from_dict(bad)


def test_ca_init_refuses_to_overwrite(tmp_path, ca):
    with pytest.raises(CaError, match="already exists"):
        FleetCa.init(ca.directory, "lab")
    assert FleetCa.load(ca.directory).public_key == ca.public_key


def test_missing_ca_and_unenrolled_root_say_what_to_run(tmp_path):
    with pytest.raises(CaError, match="igris ca init"):
        FleetCa.load(tmp_path / "nope")
    with pytest.raises(NotEnrolled, match="igris enroll"):
        Identity.load(tmp_path / "empty")


def test_missing_key_file_is_not_enrolled(tmp_path, ca):
    root = tmp_path / "root"
    enroll(root, ca, "pi-01", now_ms=NOW)
    RootLayout(root).box_key.unlink()
    with pytest.raises(NotEnrolled, match=r"box\.key"):
        Identity.load(root)


def test_key_file_readable_by_others_is_refused(tmp_path, ca):
    root = tmp_path / "root"
    enroll(root, ca, "pi-01", now_ms=NOW)
    RootLayout(root).sign_key.chmod(0o644)
    with pytest.raises(KeyFileInvalid, match="chmod 600"):
        Identity.load(root)


def test_garbled_key_file_is_refused(tmp_path, ca):
    root = tmp_path / "root"
    enroll(root, ca, "pi-01", now_ms=NOW)
    RootLayout(root).sign_key.write_text("not*base64\n")
    with pytest.raises(KeyFileInvalid, match="base64url"):
        Identity.load(root)
    RootLayout(root).sign_key.write_text("AAAA\n")
    with pytest.raises(KeyFileInvalid, match="expected 32"):
        Identity.load(root)


def test_key_not_matching_certificate_is_refused(tmp_path, ca):
    root = tmp_path / "root"
    enroll(root, ca, "pi-01", now_ms=NOW)
    other = tmp_path / "other"
    enroll(other, ca, "pi-02", now_ms=NOW)
    RootLayout(root).sign_key.write_bytes(RootLayout(other).sign_key.read_bytes())
    with pytest.raises(CertificateInvalid, match="does not match"):
        Identity.load(root)


def test_identity_signature_verifies_with_certificate_key(tmp_path, ca):
    enroll(tmp_path / "root", ca, "pi-01", now_ms=NOW)
    ident = Identity.load(tmp_path / "root")
    sig = ident.sign(b"hello")
    nacl.signing.VerifyKey(ident.certificate.sign_key).verify(b"hello", sig)
    # The direct libsodium call gives PyNaCl's signature (Ed25519 is deterministic),
    # for an empty message and a large one too.
    for message in (b"hello", b"", bytes(range(256)) * 300):
        assert ident.sign(message) == ident.signing_key.sign(message).signature
    summary = ident.public_summary()
    assert "sign_key" in summary and all("seed" not in k for k in summary)
    json.dumps(summary)
