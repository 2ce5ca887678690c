"""Plays systemd for an agent installed in A/B slots, as the igris-agent unit does.

Before each start it runs the boot check (``ExecStartPre=... ota-check.py BASE``),
then ``BASE/current/bin/python -m agent run ARGS...``; it starts the agent again
after a restart request (exit 75) or a crash (``Restart=on-failure``), up to a
limit, and stops it on SIGTERM. Run as a script::

    python tests/support/slot_runner.py BASE --root ROOT [igris run options]

:class:`SlotAgent` is an :class:`AgentProcess` started through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository on the path for tests.*
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.agent_process import AgentProcess

MAX_STARTS = 8


def run(base: str, args: list[str]) -> int:
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for _ in range(MAX_STARTS):
        subprocess.run([sys.executable, f"{base}/ota-check.py", base], check=False)
        if stopping:
            return 0
        started = time.monotonic()
        # cwd: not the checkout, whose agent/ "python -m" would find before the slot's.
        child = subprocess.Popen([f"{base}/current/bin/python", "-m", "agent", "run", *args],
                                 cwd=base)
        code = child.wait()
        print(f"slot_runner: agent exited {code} after {time.monotonic() - started:.2f} s",
              flush=True)
        if stopping or code == 0:
            return code
    return 1


class SlotAgent(AgentProcess):
    """An agent run from the A/B slots under ``base`` through the runner above."""

    def __init__(self, base: Path, root: Path, *args: str, env: dict[str, str] | None = None):
        super().__init__(root, *args, env=env)
        self.base = base

    def start(self) -> SlotAgent:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.base), "--root", str(self.root), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the runner and the agent it started (one process group)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None:
            self.kill()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
