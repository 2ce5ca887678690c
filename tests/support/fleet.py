"""A fleet of real ``igris run`` processes on one broker, for the multi-agent tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from agent.identity import FleetCa, enroll
from tests.support.agent_process import AgentProcess, short_root

FAST = {"IGRIS_HEALTH_HEARTBEAT_S": "0.5"}


def now_ms() -> int:
    return int(time.time() * 1000)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m agent ARGS...`` (the ``igris`` command), its output captured."""
    return subprocess.run([sys.executable, "-m", "agent", *args], check=False,
                          capture_output=True, text=True, timeout=timeout)


class Fleet:
    """A fleet CA, enrolled roots (``name -> groups``) and their agent processes."""

    def __init__(self, broker, groups: Mapping[str, Sequence[str]], *,
                 args: Sequence[str] = ()) -> None:
        self.broker = broker
        self.base = short_root()
        self.ca = FleetCa.init(self.base / "ca", "lab")
        self.args = tuple(args)
        self.env: dict[str, dict[str, str]] = {}  # name -> extra environment of its agent
        self.agents: dict[str, AgentProcess] = {}
        for name, names in groups.items():
            enroll(self.base / name, self.ca, name, now_ms=now_ms(), groups=tuple(names))

    def operator(self, name: str = "op1"):
        """An enrolled operator root (made once), for the CLI's --root."""
        root = self.base / "op"
        if not (root / "cert.json").exists():
            enroll(root, self.ca, name, now_ms=now_ms(), role="operator")
        return root

    def start(self, name: str) -> AgentProcess:
        agent = AgentProcess(self.base / name, "--broker", self.broker.url, *self.args,
                             env={**FAST, **self.env.get(name, {})}).start()
        self.agents[name] = agent
        return agent

    def start_all(self) -> None:
        for name in [p.name for p in sorted(self.base.iterdir()) if (p / "cert.json").exists()
                     and p.name not in ("op", "ca")]:
            self.start(name)
        for agent in self.agents.values():
            agent.wait_ready()

    def wait_all(self, want: dict[str, str], timeout: float = 10.0, skip: tuple = ()) -> None:
        """Every running agent (but ``skip``) sees each device in ``want`` in that state."""
        for name, agent in self.agents.items():
            if agent.proc.poll() is None and name not in skip:
                agent.wait_peers({d: s for d, s in want.items() if d != name}, timeout)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
