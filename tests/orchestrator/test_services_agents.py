"""Services from the signed policy on a real agent process and Mosquitto: the device keeps
up the services meant for its groups, gives up on one that crash-loops (one ledger entry),
stops a service the next policy drops, and stops the rest when the agent stops."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.support.fleet import Fleet, run_cli

REPO = Path(__file__).resolve().parents[2]
SLEEPS = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHES = [sys.executable, "-c", "import sys; sys.exit(3)"]


def push_services(fleet: Fleet, tmp_path: Path, version: int, services: dict | None) -> None:
    """Push the shipped policy as ``version`` with ``services`` (None: no such section)."""
    doc = json.loads((REPO / "ai_assistant_config" / "policy.json").read_text())
    doc["version"] = version
    if services is not None:
        doc["services"] = services
    path = tmp_path / f"policy-{version}.json"
    path.write_text(json.dumps(doc))
    done = run_cli("policy", "push", str(path), "--root", str(fleet.operator()),
                   "--broker", fleet.broker.url)
    assert done.returncode == 0, done.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"service pid {pid} still alive"
        time.sleep(0.05)


def test_a_device_keeps_the_policys_services_up_and_stops_those_dropped(broker, tmp_path):
    fleet = Fleet(broker, {"n1": ("kitchen",)})
    root = fleet.base / "n1"
    try:
        fleet.start_all()
        agent = fleet.agents["n1"]
        push_services(fleet, tmp_path, 2, {
            "keeper": {"argv": SLEEPS, "help": "stays up"},
            "crasher": {"argv": CRASHES, "restart": "on-failure", "backoff_s": 0.05,
                        "max_backoff_s": 0.1, "crash_loop": 3},
            "garage-only": {"argv": SLEEPS, "groups": ["garage"]},
        })
        agent.wait_for(lambda s: s["policy_version"] == 2
                       and s["services"].get("crasher", {}).get("state") == "crash-loop"
                       and s["services"].get("keeper", {}).get("state") == "running",
                       what="keeper running and crasher in crash-loop")

        shown = run_cli("status", "--json", "--root", str(root))
        assert shown.returncode == 0, shown.stderr
        services = json.loads(shown.stdout)["services"]
        assert sorted(services) == ["crasher", "keeper"]  # not garage-only: not our group
        keeper = services["keeper"]["pid"]
        assert keeper is not None and alive(keeper)
        crasher = services["crasher"]
        assert (crasher["restarts"], crasher["last_exit"], crasher["pid"]) == (2, 3, None)
        ledger = run_cli("ledger", "show", "--kind", "service", "--json", "--root", str(root))
        assert [e["body"] for e in json.loads(ledger.stdout)] == [
            {"name": "crasher", "state": "crash-loop", "exits": 3, "window_s": 60.0,
             "last_exit": 3}]

        # A policy without them stops the keeper; a new service starts.
        push_services(fleet, tmp_path, 3, {"other": {"argv": SLEEPS}})
        status = agent.wait_for(lambda s: s["policy_version"] == 3
                                and list(s["services"]) == ["other"]
                                and s["services"]["other"]["pid"] is not None,
                                what="only the service 'other' running")
        wait_gone(keeper)
        other = status["services"]["other"]["pid"]
        assert alive(other)

        # Stopping the agent stops the services it keeps.
        assert agent.stop() == 0
        wait_gone(other)
    finally:
        for running in fleet.agents.values():
            running.stop()  # SIGTERM first: a failed test leaves no service behind
        fleet.close()
