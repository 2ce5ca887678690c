"""``igris led test``: drives the LED itself, or asks the running agent that owns it."""

import json

from agent.cli import main
from agent.device import LedState
from tests.support.agent_process import AgentProcess, short_root

ALL_STATES = [state.value for state in LedState]


def test_led_test_without_agent_cycles_every_pattern_locally(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IGRIS_HEALTH_PIN_FACTORY", "mock")
    (tmp_path / "agent.toml").write_text('[agent]\ntarget = "rpi4"\n')
    code = main(["led", "test", "--root", str(tmp_path), "--dwell", "0.01", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out == {"shown": ALL_STATES, "by": "local"}


def test_led_test_with_agent_running_asks_the_agent(capsys):
    agent = AgentProcess(short_root() / "led", "--target", "rpi4").start()
    try:
        agent.wait_ready()
        code = main(["led", "test", "--root", str(agent.root), "--dwell", "0.01", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0
        assert out == {"shown": ALL_STATES, "by": "agent"}
        assert agent.status()["led"] == "healthy"  # back to the real state afterwards
    finally:
        agent.close()
