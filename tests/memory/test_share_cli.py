"""``igris mem share|unshare``: asked of the running agent, which sends the key messages."""

import json

from agent.cli import main
from agent.control import SOCKET_NAME, call
from tests.support.agent_process import AgentProcess, short_root


def test_share_and_unshare_go_through_the_running_agent(capsys):
    agent = AgentProcess(short_root() / "mem", "--target", "rpi4").start()
    try:
        status = agent.wait_ready()
        me = status["device_id"]
        root = ["--root", str(agent.root)]
        assert main(["mem", "put", "notes", "a", "1", *root]) == 0
        capsys.readouterr()

        assert main(["mem", "share", "notes", me, "--json", *root]) == 0
        shared = json.loads(capsys.readouterr().out)
        assert shared["members"] == [me] and shared["version"] == 1

        # A device whose certificate the agent never saw is reported, not skipped.
        assert main(["mem", "share", "notes", "ghost", *root]) != 0
        assert "ghost" in capsys.readouterr().err
        assert main(["mem", "unshare", "notes", "ghost", *root]) != 0
        assert "not a member" in capsys.readouterr().err
        assert call(agent.root / SOCKET_NAME, "status")["memory"]["sharing"]["shared_pools"] == 1
    finally:
        agent.close()
