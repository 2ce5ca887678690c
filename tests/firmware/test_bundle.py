"""Signed bundles: build, verify, and every refusal, against a real CA, real keys, a real wheel."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.compat import b64url_encode, canonical_json, wall_ms
from agent.errors import CertificateInvalid, ConfigInvalid
from agent.identity import FleetCa, Identity, enroll
from firmware_tools import BundleRejected, Manifest, build_bundle, parse_version, verify_bundle
from firmware_tools.cli import build_parser, main
from tests.support.inproc_fleet import NOW

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ntarget = "rpi4"\n\n[health]\nheartbeat_s = 5\n')
    return path


@pytest.fixture
def bundle(tmp_path: Path, operator: Identity, agent_wheel: Path, config_file: Path) -> Path:
    """A bundle of this tree's wheel and a config, for rpi4 and rpi5, signed by alice at NOW."""
    out = tmp_path / "igris.tar"
    build_bundle(out, signer=operator, version=__version__, wheel=agent_wheel, now_ms=NOW,
                 config=config_file, targets=("rpi5", "rpi4"))
    return out


def rejection(path: Path, ca: FleetCa, *, now_ms: int = NOW, **kwargs: Any) -> BundleRejected:
    with pytest.raises(BundleRejected) as caught:
        verify_bundle(path, ca_public=ca.public_key, now_ms=now_ms, **kwargs)
    return caught.value


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def write_tar(path: Path, files: dict[str, bytes], *, symlink: str | None = None) -> Path:
    """A tar of ``files`` as given (names unchecked), plus an optional symlink member."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            link = tarfile.TarInfo(symlink)
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return path


def resign(path: Path, by: Identity, out: Path, **changes: Any) -> Path:
    """The bundle at ``path`` with its manifest changed and signed again by ``by``."""
    files = members(path)
    manifest = {**json.loads(files["manifest.json"]), **changes}
    body = canonical_json(manifest)
    files["manifest.json"] = body
    files["signature.json"] = canonical_json(
        {"sig": b64url_encode(by.sign(body)), "cert": by.certificate.to_dict()})
    return write_tar(out, files)


def test_round_trip_returns_the_signed_manifest_and_extracts_exact_files(
        bundle, fleet_ca, agent_wheel, config_file, tmp_path):
    out = tmp_path / "unpacked"
    out.mkdir()
    manifest = verify_bundle(bundle, ca_public=fleet_ca.public_key, now_ms=NOW + 1000,
                             target="rpi4", current_version="0.0.9", extract_to=out)
    assert manifest.version == __version__ and manifest.signer == "alice"
    assert manifest.targets == ("rpi4", "rpi5") and manifest.min_version == "0.0.0"
    assert manifest.created_ms == NOW
    assert manifest.wheel == f"payload/{agent_wheel.name}"
    assert manifest.files[0].size == agent_wheel.stat().st_size
    assert (out / agent_wheel.name).read_bytes() == agent_wheel.read_bytes()
    assert (out / "agent.toml").read_bytes() == config_file.read_bytes()
    assert Manifest.from_dict(json.loads(members(bundle)["manifest.json"])) == manifest
    assert list(members(bundle)) == ["manifest.json", "signature.json", manifest.wheel,
                                     "payload/agent.toml"]


def test_a_bundle_without_targets_fits_every_target(tmp_path, operator, agent_wheel, fleet_ca):
    out = tmp_path / "any.tar"
    manifest = build_bundle(out, signer=operator, version=__version__, wheel=agent_wheel,
                            now_ms=NOW)
    assert manifest.targets == ("*",) and manifest.config is None
    for target in ("rpi4", "jetson-orin-nano", "a-board-of-tomorrow"):
        verify_bundle(out, ca_public=fleet_ca.public_key, now_ms=NOW, target=target)


def test_missing_signature_is_unsigned(bundle, fleet_ca, tmp_path):
    files = members(bundle)
    del files["signature.json"]
    assert rejection(write_tar(tmp_path / "b.tar", files), fleet_ca).reason == "unsigned"


@pytest.mark.parametrize("garble", ["flip-a-byte", "not-json", "short"])
def test_a_garbled_signature_is_refused(bundle, fleet_ca, tmp_path, garble):
    files = members(bundle)
    sig = json.loads(files["signature.json"])
    if garble == "flip-a-byte":
        raw = bytearray(sig["sig"].encode())
        raw[10] = ord("A") if raw[10] != ord("A") else ord("B")
        files["signature.json"] = canonical_json({**sig, "sig": raw.decode()})
    elif garble == "not-json":
        files["signature.json"] = b"{sig:"
    else:
        files["signature.json"] = canonical_json({**sig, "sig": "AAAA"})
    assert rejection(write_tar(tmp_path / "b.tar", files), fleet_ca).reason == "bad-signature"


def test_a_manifest_changed_after_signing_fails_the_signature(bundle, fleet_ca, tmp_path):
    files = members(bundle)
    manifest = json.loads(files["manifest.json"])
    files["manifest.json"] = canonical_json({**manifest, "min_version": "0.0.1"})
    error = rejection(write_tar(tmp_path / "b.tar", files), fleet_ca)
    assert error.reason == "bad-signature" and "alice" in str(error)


def test_signed_by_a_device_certificate_is_refused(bundle, identity, fleet_ca, tmp_path):
    forged = resign(bundle, identity, tmp_path / "b.tar", signer="pi-01")
    error = rejection(forged, fleet_ca)
    assert error.reason == "not-operator" and "'device'" in str(error)


def test_signed_by_an_operator_of_another_ca_is_refused(bundle, fleet_ca, agent_wheel, tmp_path):
    other = FleetCa.init(tmp_path / "other-ca", "lab")
    enroll(tmp_path / "mallory", other, "alice", now_ms=NOW, role="operator")
    foreign = tmp_path / "foreign.tar"
    build_bundle(foreign, signer=Identity.load(tmp_path / "mallory"), version=__version__,
                 wheel=agent_wheel, now_ms=NOW)
    assert rejection(foreign, fleet_ca).reason == "untrusted-signer"


def test_a_certificate_with_a_forged_ca_signature_is_refused(bundle, fleet_ca, tmp_path):
    files = members(bundle)
    sig = json.loads(files["signature.json"])
    sig["cert"]["groups"] = ["admins"]  # the CA never signed this
    files["signature.json"] = canonical_json(sig)
    error = rejection(write_tar(tmp_path / "b.tar", files), fleet_ca)
    assert error.reason == "untrusted-signer" and "bad CA signature" in str(error)


def test_an_expired_signer_certificate_is_refused(bundle, fleet_ca):
    error = rejection(bundle, fleet_ca, now_ms=NOW + 11 * DAY_MS)
    assert error.reason == "cert-expired" and "expired" in str(error)


def test_a_file_changed_after_signing_is_refused_and_nothing_is_left_extracted(
        bundle, fleet_ca, tmp_path):
    files = members(bundle)
    same_size = files["payload/agent.toml"].replace(b"heartbeat_s = 5", b"heartbeat_s = 9")
    files["payload/agent.toml"] = same_size
    out = tmp_path / "unpacked"
    out.mkdir()
    error = rejection(write_tar(tmp_path / "b.tar", files), fleet_ca, extract_to=out)
    assert error.reason == "digest-mismatch" and "payload/agent.toml" in str(error)
    assert list(out.iterdir()) == []
    files["payload/agent.toml"] += b"# one more line\n"
    assert rejection(write_tar(tmp_path / "c.tar", files), fleet_ca).reason == "size-mismatch"


def test_an_extra_file_is_refused(bundle, fleet_ca, tmp_path):
    files = {**members(bundle), "payload/evil.pth": b"import os\n"}
    error = rejection(write_tar(tmp_path / "b.tar", files), fleet_ca)
    assert error.reason == "unlisted-file" and "evil.pth" in str(error)


def test_a_missing_file_is_refused(bundle, fleet_ca, tmp_path):
    files = members(bundle)
    del files["payload/agent.toml"]
    assert rejection(write_tar(tmp_path / "b.tar", files), fleet_ca).reason == "missing-file"


@pytest.mark.parametrize("name", ["../agent.toml", "payload/../../etc/cron.d/x", "/etc/passwd"])
def test_a_path_leaving_the_bundle_is_refused(bundle, fleet_ca, tmp_path, name):
    files = {**members(bundle), name: b"x"}
    error = rejection(write_tar(tmp_path / "b.tar", files), fleet_ca)
    assert error.reason == "unsafe-path" and repr(name) in str(error)


def test_a_symlink_is_refused(bundle, fleet_ca, tmp_path):
    error = rejection(write_tar(tmp_path / "b.tar", members(bundle), symlink="payload/passwd"),
                      fleet_ca)
    assert error.reason == "unsafe-member" and "symlink" in str(error)


def test_a_target_it_does_not_fit_is_refused(bundle, fleet_ca):
    error = rejection(bundle, fleet_ca, target="jetson-orin-nano")
    assert error.reason == "wrong-target" and "rpi4, rpi5" in str(error)


def test_a_downgrade_is_refused_unless_allowed(bundle, fleet_ca):
    newer = f"{parse_version(__version__)[0] + 1}.0.0"
    error = rejection(bundle, fleet_ca, current_version=newer)
    assert error.reason == "downgrade" and "--allow-downgrade" in str(error)
    manifest = verify_bundle(bundle, ca_public=fleet_ca.public_key, now_ms=NOW,
                             current_version=newer, allow_downgrade=True)
    assert manifest.version == __version__
    verify_bundle(bundle, ca_public=fleet_ca.public_key, now_ms=NOW,
                  current_version=__version__)  # a reinstall is not a downgrade


def test_below_the_min_version_is_refused_even_with_allow_downgrade(
        tmp_path, operator, agent_wheel, fleet_ca):
    out = tmp_path / "b.tar"
    build_bundle(out, signer=operator, version=__version__, wheel=agent_wheel, now_ms=NOW,
                 min_version="0.0.5")
    for allow in (False, True):
        error = rejection(out, fleet_ca, current_version="0.0.4", allow_downgrade=allow)
        assert error.reason == "below-min-version" and "0.0.5" in str(error)
    verify_bundle(out, ca_public=fleet_ca.public_key, now_ms=NOW, current_version="0.0.5")


def test_an_unknown_manifest_key_is_refused_with_a_suggestion(bundle, operator, fleet_ca,
                                                              tmp_path):
    changed = resign(bundle, operator, tmp_path / "b.tar", min_versoin="9.9.9")
    error = rejection(changed, fleet_ca)
    assert error.reason == "bad-manifest" and "did you mean 'min_version'" in str(error)


def test_a_file_that_is_not_a_tar_is_not_a_bundle(tmp_path, fleet_ca):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"PK\x03\x04" + bytes(600))
    assert rejection(junk, fleet_ca).reason == "not-a-bundle"
    assert rejection(tmp_path / "absent.tar", fleet_ca).reason == "not-found"


def test_build_refuses_what_devices_would_refuse(tmp_path, operator, identity, agent_wheel):
    out = tmp_path / "b.tar"
    with pytest.raises(ConfigInvalid, match="differs from the wheel's version"):
        build_bundle(out, signer=operator, version="9.9.9", wheel=agent_wheel, now_ms=NOW)
    with pytest.raises(ConfigInvalid, match=r"X\.Y\.Z"):
        build_bundle(out, signer=operator, version="1.0", wheel=agent_wheel, now_ms=NOW)
    with pytest.raises(ConfigInvalid, match="did you mean 'rpi4'"):
        build_bundle(out, signer=operator, version=__version__, wheel=agent_wheel, now_ms=NOW,
                     targets=("rpi-4",))
    with pytest.raises(CertificateInvalid, match="role 'device'"):
        build_bundle(out, signer=identity, version=__version__, wheel=agent_wheel, now_ms=NOW)
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('[mqtt]\nbrokr = "mqtt://x:1883"\n')
    with pytest.raises(ConfigInvalid, match="did you mean 'broker'"):
        build_bundle(out, signer=operator, version=__version__, wheel=agent_wheel, now_ms=NOW,
                     config=bad_config)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_versions_compare_as_integer_tuples():
    assert parse_version("0.10.0") > parse_version("0.9.12")
    for bad in ("1.2", "1.2.3rc1", "01.2.3", "1.2.3+local", ""):
        with pytest.raises(ConfigInvalid, match=re.escape(repr(bad))):
            parse_version(bad)


# The command line


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_build_then_verify_json(tmp_path, capsys, fleet_ca, agent_wheel):
    ops = tmp_path / "ops"
    enroll(ops, fleet_ca, "alice", role="operator", now_ms=wall_ms())
    out = tmp_path / "b.tar"
    code, printed, _ = run_cli(capsys, "bundle", "build", "--version", __version__, "--wheel",
                               str(agent_wheel), "--target", "rpi4", "--root", str(ops), "-o",
                               str(out), "--json")
    assert code == 0 and json.loads(printed)["targets"] == ["rpi4"]
    code, printed, _ = run_cli(capsys, "bundle", "verify", str(out), "--ca",
                               str(fleet_ca.directory), "--target", "rpi4", "--json")
    assert code == 0
    verified = json.loads(printed)
    assert verified["ok"] is True and verified["signer"] == "alice"
    code, printed, err = run_cli(capsys, "bundle", "verify", str(out), "--ca",
                                 str(fleet_ca.directory / "ca.pub"), "--target", "rpi5",
                                 "--json")
    assert code == 1 and json.loads(printed) == {
        "ok": False, "reason": "wrong-target", "detail": f"bundle {__version__} fits rpi4, "
                                                         "not 'rpi5'"}
    assert err.startswith("igris-fw: error: wrong-target") and "Traceback" not in err
    code, printed, _ = run_cli(capsys, "bundle", "verify", str(out), "--ca", str(ops))
    assert code == 0 and "alice" in printed and "ok" in printed


def test_cli_exit_codes_and_help():
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "firmware_tools", *argv], check=False,
                              cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    assert run("bundle", "verify", "--help").returncode == 0
    assert "--allow-downgrade" in run("bundle", "verify", "--help").stdout
    usage = run("bundle", "build", "--wheel", "x.whl")
    assert usage.returncode == 2 and "--version" in usage.stderr
    refused = run("bundle", "verify", "/nonexistent.tar", "--ca", str(REPO / "README.md"))
    assert refused.returncode == 1 and "igris-fw: error:" in refused.stderr


def test_every_igris_fw_command_and_option_has_help():
    def walk(parser, path=()):
        yield path, parser
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))

    seen = set()
    for path, parser in walk(build_parser()):
        seen.add(path)
        assert parser.description, f"igris-fw {' '.join(path)} has no description"
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"igris-fw {' '.join(path)} {action.option_strings}"
    assert {("bundle", "build"), ("bundle", "verify"), ("image", "prepare")} <= seen
