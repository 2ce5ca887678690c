"""``igris ca init``, ``enroll``, ``keys show``, ``version``: the real commands."""

import json
import stat

from agent.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ca_init_enroll_and_keys_show(tmp_path, capsys):
    ca, root = tmp_path / "ca", tmp_path / "root"
    code, out, _ = run_cli(capsys, "ca", "init", str(ca), "--fleet", "lab", "--json")
    assert code == 0
    assert json.loads(out)["fleet"] == "lab"
    code, out, _ = run_cli(
        capsys, "enroll", "--root", str(root), "--ca", str(ca), "--device-id", "pi-01",
        "--group", "kitchen", "--group", "north", "--cap", "model:digits", "--days", "30",
        "--json",
    )
    assert code == 0
    enrolled = json.loads(out)
    assert enrolled["groups"] == ["kitchen", "north"]
    assert stat.S_IMODE((root / "keys" / "sign.key").stat().st_mode) == 0o600
    code, out, _ = run_cli(capsys, "keys", "show", "--root", str(root), "--json")
    shown = json.loads(out)
    assert shown["device_id"] == "pi-01"
    assert shown["sign_key_id"] == enrolled["sign_key_id"]
    assert "seed" not in out and (root / "keys" / "sign.key").read_text().strip() not in out
    code, out, _ = run_cli(capsys, "keys", "show", "--root", str(root))
    assert "pi-01" in out and "sign_key" in out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    code, _, err = run_cli(capsys, "keys", "show", "--root", str(tmp_path / "nowhere"))
    assert code == 1
    assert err.startswith("igris: error:") and "igris enroll" in err
    assert "Traceback" not in err
    code, _, err = run_cli(capsys, "enroll", "--root", str(tmp_path / "r"), "--ca",
                           str(tmp_path / "noca"), "--device-id", "x")
    assert code == 1 and "igris ca init" in err
    run_cli(capsys, "ca", "init", str(tmp_path / "ca"))
    code, _, err = run_cli(capsys, "enroll", "--root", str(tmp_path / "r"), "--ca",
                           str(tmp_path / "ca"), "--device-id", "bad/id")
    assert code == 1 and "device id" in err


def test_status_without_agent_says_none_is_running(tmp_path, capsys):
    code, _, err = run_cli(capsys, "status", "--root", str(tmp_path))
    assert code == 1
    assert "no agent is running" in err and "igris run" in err


def test_version_json(capsys):
    code, out, _ = run_cli(capsys, "version", "--json")
    versions = json.loads(out)
    assert code == 0 and versions["igris"] and versions["paho-mqtt"] != "missing"
