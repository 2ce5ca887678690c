"""Shared plumbing for the benchmark scripts (not a benchmark itself).

Importing this module puts the repository root on ``sys.path`` (so the
scripts run from any directory and measure the working tree, not an installed
copy) and gives: the agent and floor processes, /proc readers, a temp-dir and
subprocess janitor that also runs on Ctrl-C and SIGTERM, and the PASS/MISS
report every script prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """Something kept the benchmark from measuring (not a missed target)."""


# --------------------------------------------------------------------------- cleanup


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every ``finally`` cleans up."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# Changes to the children's environment made by use_bytecode_cache().
_ENV_CHANGES: dict[str, str | None] = {}


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child Pythons: the repository first on the path."""
    env = dict(os.environ)
    for key, value in _ENV_CHANGES.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class Janitor(contextlib.ExitStack):
    """Owns temp dirs and subprocesses; removes/stops them on exit, even on Ctrl-C."""

    def tempdir(self, prefix: str = "ig") -> Path:
        # Short, under /tmp: the agent's control socket path must stay < 108 bytes.
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.callback(shutil.rmtree, path, ignore_errors=True)
        return path

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(args, **kwargs)
        self.callback(stop_process, proc)
        return proc

    def broker(self, directory: Path) -> Any:
        """A real Mosquitto on a free loopback port (tests/support/broker.py)."""
        from tests.support.broker import MosquittoBroker

        return self.enter_context(MosquittoBroker(directory))


BYTECODE_CHOICES = ("cached", "inherit")
BYTECODE_HELP = (
    "'cached' (default): children read and write .pyc files in a private cache "
    "(PYTHONPYCACHEPREFIX in the bench's temp dir, warmed before measuring), as an "
    "installed agent does (pip compiles on install); 'inherit': the environment as it "
    "is (with PYTHONDONTWRITEBYTECODE=1 every agent start compiles agent/ from source)"
)


def use_bytecode_cache(janitor: Janitor, mode: str) -> str:
    """Set up how child Pythons get bytecode; returns a one-line description."""
    _ENV_CHANGES.clear()
    if mode == "inherit":
        dont = os.environ.get("PYTHONDONTWRITEBYTECODE")
        return f"inherited environment (PYTHONDONTWRITEBYTECODE={dont or 'unset'})"
    cache = janitor.tempdir("igpyc")
    _ENV_CHANGES.update(PYTHONPYCACHEPREFIX=str(cache), PYTHONDONTWRITEBYTECODE=None)
    # Compile the agent and the floor's imports now; a warm-up agent run (each
    # bench does one) caches whatever the agent imports lazily.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "agent")],
                   env=child_env(), check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-c", "import agent.cli.main, agent.runtime, "
                    "paho.mqtt.client, nacl.signing, psutil, sqlite3"],
                   env=child_env(), check=True, cwd=REPO)
    return "private .pyc cache, warmed"


# --------------------------------------------------------------------------- /proc


def rss(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` in MB: total, anonymous and file-backed (VmRSS...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mb": fields["VmRSS"], "anon_mb": fields["RssAnon"],
            "file_mb": fields["RssFile"], "peak_mb": fields["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` has used, seconds.

    The sum over its threads of the scheduler's on-CPU time
    (``/proc/PID/task/*/schedstat``, nanoseconds) when the kernel has it:
    user + system time in /proc/PID/stat moves in 10 ms ticks, too coarse for
    an idle process over a short window. A thread that exits takes its
    schedstat time with it (the agent's executor threads stay for its
    lifetime); :func:`cpu_ticks_seconds` gives the tick count as a cross-check.
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                total_ns += int((task / "schedstat").read_text().split()[0])
    except FileNotFoundError:
        raise BenchError(f"process {pid} is gone") from None
    except (OSError, ValueError, IndexError):
        return cpu_ticks_seconds(pid)
    return total_ns / 1e9


def cpu_ticks_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` from /proc/PID/stat (10 ms ticks), seconds.

    Counts every thread, living or exited.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(after_name[11]), int(after_name[12])  # fields 14 and 15
    return (utime + stime) / CLK_TCK


# --------------------------------------------------------------------------- processes


@dataclass
class AgentProc:
    """``python -m agent run --root ROOT --broker URL`` with its output in a log file."""

    root: Path
    broker_url: str
    device_id: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "agent", "run", "--root", str(self.root),
                "--broker", self.broker_url, "--device-id", self.device_id,
                *self.extra_args]

    def start(self, janitor: Janitor) -> AgentProc:
        with self.log_path.open("ab") as log:
            self.proc = janitor.popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=REPO,
                env=child_env(IGRIS_HEALTH_PIN_FACTORY="mock"),
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, Any]:
        from agent.control.client import call

        return call(self.root / "control.sock", "status", timeout=5)

    def wait_connected(self, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the control socket until the agent says its broker is connected."""
        from agent.errors import ControlError

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"agent {self.device_id} exited with {self.proc.returncode}:\n"
                                 f"{self.output()[-3000:]}")
            try:
                status = self.status()
                if status["broker"]["connected"]:
                    return status
            except ControlError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"agent {self.device_id} not connected within {timeout} s:\n"
                                 f"{self.output()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def python_floor(janitor: Janitor, code: str, log_path: Path,
                 *args: str) -> subprocess.Popen[str]:
    """A child ``python -c code args...`` on the same interpreter; waits for its first line."""
    with log_path.open("ab") as log:
        proc = janitor.popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                             stderr=log, stdin=subprocess.DEVNULL, text=True,
                             env=child_env(), cwd=REPO)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise BenchError(f"floor process exited with {proc.returncode}: "
                         f"{log_path.read_text(errors='replace')[-2000:]}")
    return proc


def make_ca(directory: Path, fleet: str) -> Any:
    from agent.identity import FleetCa

    return FleetCa.init(directory, fleet)


def pre_enroll(root: Path, ca: Any, device_id: str) -> None:
    """Give ``root`` keys and a certificate now, so ``igris run`` makes no dev CA."""
    from agent.compat import wall_ms
    from agent.identity import enroll

    enroll(root, ca, device_id, now_ms=wall_ms(), days=30)


# --------------------------------------------------------------------------- report


@dataclass
class Target:
    """One figure with its floor and the target it is judged against."""

    name: str
    value: float
    unit: str
    target: float
    compare: str  # "<=" or ">="
    judged: str  # what the target applies to: "value" or "ratio"
    floor: float | None = None
    ratio: float | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        x = self.ratio if self.judged == "ratio" else self.value
        assert x is not None
        ok = x <= self.target if self.compare == "<=" else x >= self.target
        return "PASS" if ok else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": _round(self.value), "unit": self.unit,
                "floor": _round(self.floor), "ratio": _round(self.ratio, 3),
                "target": f"{self.judged} {self.compare} {self.target:g}",
                "verdict": self.verdict, "note": self.note}


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class Report:
    bench: str
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "machine": machine(),
                "targets": [t.to_dict() for t in self.targets], "details": self.details}

    def print(self, as_json: bool, extra_lines: Callable[[], Iterator[str]] | None = None) -> None:
        if as_json:
            print(json.dumps(self.to_dict()))
            return
        if extra_lines is not None:
            for line in extra_lines():
                print(line)
            print()
        print(format_targets(self.targets))


def format_targets(targets: list[Target] | list[dict[str, Any]]) -> str:
    rows = [t.to_dict() if isinstance(t, Target) else t for t in targets]
    head = ("figure", "value", "floor", "ratio", "target", "verdict")
    table = [head] + [(
        r["name"], _fmt(r["value"], r["unit"]), _fmt(r["floor"], r["unit"]),
        "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["target"], r["verdict"],
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)


def _fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:.3g} {unit}" if abs(x) < 100 else f"{x:.0f} {unit}"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "system": platform.system()}
