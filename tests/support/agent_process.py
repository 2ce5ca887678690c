"""Run a real ``igris run`` in a subprocess and talk to it over its control socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.control import SOCKET_NAME, call
from agent.errors import ControlError


def short_root(prefix: str = "ig") -> Path:
    """A temp dir short enough for a Unix socket path (pytest's can be too long)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class AgentProcess:
    """``python -m agent run --root ROOT ARGS...`` with its output kept in a file."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None):
        self.root = root
        self.args = args
        self.env = {**os.environ, "IGRIS_HEALTH_PIN_FACTORY": "mock", **(env or {})}
        self.log_path = root.parent / f"{root.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--root", str(self.root), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )
        log.close()
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the agent answers ``status``; fail with its output if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.proc.returncode}:\n{self.output()}"
                )
            try:
                return self.status()
            except ControlError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"agent not ready in {timeout} s:\n{self.output()}"
                    ) from None
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return call(self.root / SOCKET_NAME, "status", timeout=5)

    def peers(self) -> dict[str, str]:
        """Device id -> state, as ``igris peers`` reports it."""
        result = call(self.root / SOCKET_NAME, "peers", timeout=5)
        return {p["device_id"]: p["state"] for p in result["peers"]}

    def wait_peers(self, want: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
        """Poll ``peers`` until every device in ``want`` has the wanted state."""
        deadline = time.monotonic() + timeout
        while True:
            peers = self.peers()
            if all(peers.get(dev) == state for dev, state in want.items()):
                return peers
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.root.name}: wanted {want}, peers are {peers}\n{self.output()[-3000:]}"
                )
            time.sleep(0.05)

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        """Poll ``status`` until ``predicate(status)`` is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last status: {status}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
