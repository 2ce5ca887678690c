"""``igris enroll --lite`` and the board's file set (``firmware_tools.micropython``)."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest

from agent.errors import KeyFileInvalid
from agent.identity.lite import read_lite_record
from firmware_tools.errors import FirmwareError
from firmware_tools.micropython import BOARD_SIZE_GOAL, board_bundle, strip_source
from tests.support.fleet import run_cli

REPO = Path(__file__).resolve().parents[2]


def _check_config(config: dict) -> dict:
    spec = importlib.util.spec_from_file_location(
        "lite_agent", REPO / "targets" / "micropython" / "lite_agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_config(config)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enroll_lite_writes_the_board_config_and_the_gateway_record(tmp_path: Path) -> None:
    gw = tmp_path / "gw"
    assert run_cli("enroll", "--root", str(gw), "--ca", str(tmp_path / "ca"), "--device-id",
                   "gw-01").returncode == 1  # no CA yet: the ordinary path still needs one
    assert run_cli("ca", "init", str(tmp_path / "ca"), "--fleet", "lab").returncode == 0
    assert run_cli("enroll", "--root", str(gw), "--ca", str(tmp_path / "ca"),
                   "--device-id", "gw-01").returncode == 0
    done = run_cli("enroll", "--lite", "--root", str(tmp_path / "esp"), "--device-id", "esp-1",
                   "--gateway-root", str(gw), "--broker", "mqtt://10.0.0.2:1884",
                   "--pin", "relay=5", "--writable", "relay", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    config_path, record_path = Path(out["config"]), Path(out["record"])
    assert record_path == gw / "lite" / "esp-1.json"
    assert _mode(config_path) == 0o600 and _mode(record_path) == 0o600
    config = _check_config(json.loads(config_path.read_text()))
    assert (config["gateway"], config["fleet"]) == ("gw-01", "lab")
    assert config["broker"] == {"host": "10.0.0.2", "port": 1884}
    assert config["pins"] == {"relay": 5} and config["writable"] == ["relay"]
    record = read_lite_record(record_path)
    assert record.to_dict()["key"] == config["key"] and len(record.key) == 32

    again = json.loads(run_cli("enroll", "--lite", "--root", str(tmp_path / "esp"),
                               "--device-id", "esp-1", "--gateway-root", str(gw),
                               "--json").stdout)
    assert read_lite_record(Path(again["record"])).key != record.key  # a new key each time


@pytest.mark.parametrize(("extra", "message"), [
    ((), "needs --gateway-root"),
    (("--gateway", "gw", "--fleet", "lab", "--writable", "relay"), "not among the pins"),
    (("--gateway", "gw", "--fleet", "lab", "--pin", "relay"), "expected NAME=GPIO"),
    (("--gateway", "gw", "--fleet", "lab", "--broker", "mqtts://h:8883"), "plain MQTT"),
])
def test_enroll_lite_refuses_what_cannot_work(tmp_path: Path, extra: tuple, message: str
                                              ) -> None:
    done = run_cli("enroll", "--lite", "--root", str(tmp_path / "esp"), "--device-id", "esp-1",
                   *extra)
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "esp" / "config.json").exists()


def test_a_record_others_can_read_is_refused(tmp_path: Path) -> None:
    done = run_cli("enroll", "--lite", "--root", str(tmp_path / "esp"), "--device-id", "esp-1",
                   "--gateway", "gw", "--fleet", "lab", "--json")
    assert done.returncode == 0, done.stderr
    record = tmp_path / "esp" / "record" / "esp-1.json"
    record.parent.mkdir()
    record.write_text((tmp_path / "esp" / "config.json").read_text())
    record.chmod(0o644)
    with pytest.raises(KeyFileInvalid, match="chmod 600"):
        read_lite_record(record)


def test_bundle_lists_every_portable_module_and_the_copy_commands(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"device_id": "esp-1"}))
    bundle = board_bundle(config, tmp_path / "out", port="/dev/ttyUSB0", mpy=False)
    targets = [f.target for f in bundle.files]
    wire = sorted("agent/wire/" + p.name for p in (REPO / "agent" / "wire").glob("*.py"))
    assert targets == ["agent/__init__.py", "agent/errors.py", "agent/compat/__init__.py",
                       *wire, "lite_agent.py", "boot.py", "main.py", "config.json"]
    assert bundle.commands[0] == "mpremote connect /dev/ttyUSB0 fs mkdir :agent"
    copies = [c for c in bundle.commands if " fs cp " in c]
    assert len(copies) == len(targets)
    assert all(c.endswith(":" + t) for c, t in zip(copies, targets, strict=True))
    assert bundle.commands[-1] == "mpremote connect /dev/ttyUSB0 reset"
    assert bundle.total_bytes < bundle.original_bytes * 0.7
    print("board source:", bundle.total_bytes, "bytes stripped,", bundle.original_bytes,
          "as written")


def test_compiled_bundle_meets_the_size_goal(tmp_path: Path) -> None:
    # The real config of a lite device: its size counts too.
    config = tmp_path / "config.json"
    config.write_text((REPO / "targets" / "micropython" / "config.json").read_text())
    bundle = board_bundle(config, tmp_path / "out", mpy=True)
    targets = [f.target for f in bundle.files]
    assert "lite_agent.mpy" in targets and "agent/wire/envelope.mpy" in targets
    assert "boot.py" in targets and "main.py" in targets  # MicroPython runs these as source
    assert not any(t.endswith(".py") for t in targets if t not in ("boot.py", "main.py"))
    assert bundle.total_bytes <= BOARD_SIZE_GOAL
    print(f"board files: {bundle.total_bytes} bytes compiled, {bundle.original_bytes} as "
          f"written (goal <= {BOARD_SIZE_GOAL})")


def test_stripping_keeps_the_code_and_drops_the_rest() -> None:
    text = 'def f(x: int) -> int:\n    """Doc."""\n    # note\n    return x + 1\n'
    stripped = strip_source(text)
    assert stripped == "def f(x):\n return x + 1\n"
    namespace: dict = {}
    exec(stripped, namespace)  # the same behaviour
    assert namespace["f"](2) == 3


def test_bundle_refuses_a_file_that_is_no_lite_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("[]")
    with pytest.raises(FirmwareError, match="igris enroll --lite"):
        board_bundle(bad, tmp_path / "out")
