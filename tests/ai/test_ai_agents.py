"""Peer offload between two real agents on Mosquitto: a Pi asks a Jetson for the
stronger model, through ``igris infer`` and the signed command bus."""

from __future__ import annotations

import json
import time

import pytest

from agent.ai.models import holdout
from agent.identity import enroll
from tests.support.fleet import Fleet, now_ms, run_cli


@pytest.fixture
def pair(broker):
    fleet = Fleet(broker, {"pi": ("lab",)})
    # The Jetson runs the stronger model and says so in its certificate.
    enroll(fleet.base / "jetson", fleet.ca, "jetson", now_ms=now_ms(), groups=("lab",),
           caps=("model:digits-cnn",))
    fleet.start_all()
    fleet.agents["pi"].wait_peers({"jetson": "alive"})
    yield fleet
    fleet.close()


def test_the_pi_offloads_the_stronger_model_to_the_jetson(pair):
    _, labels = holdout()
    pi = str(pair.base / "pi")
    explained = json.loads(run_cli("route", "explain", "digits-cnn", "--root", pi,
                                   "--json").stdout)
    assert explained["choice"] == "peer:jetson"
    assert explained["excluded"]["local:digits-mlp"] == "does not serve digits-cnn"
    for n in (5, 17):
        done = run_cli("infer", "digits-cnn", f"holdout:{n}", "--root", pi, "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["backend"] == "peer:jetson" and result["label"] == labels[n]
    # Its own small model stays local; private requests never leave.
    local = json.loads(run_cli("infer", "digits-mlp", "holdout:5", "--root", pi, "--private",
                               "--json").stdout)
    assert local["backend"] == "local:digits-mlp"
    refused = run_cli("infer", "digits-cnn", "holdout:5", "--root", pi, "--private")
    assert refused.returncode == 1 and "private: stays on this device" in refused.stderr
    # The Jetson's ledger has the executions (read-only: batched within a quarter
    # second); the Pi's status counts the decisions.
    assert jetson_runs(pair, want=2) == ["infer", "infer"]
    ai = pair.agents["pi"].status()["ai"]
    assert ai["decisions"] == {"peer:jetson": 2, "local:digits-mlp": 1, "none": 1}


def jetson_runs(pair: Fleet, *, want: int, timeout: float = 10.0) -> list[str]:
    """The commands the Jetson's ledger records, once it records ``want`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = json.loads(run_cli("ledger", "show", "--root", str(pair.base / "jetson"),
                                   "--kind", "commands", "--json").stdout)
        runs = [r["cmd"] for e in reversed(shown) for r in e["body"]["runs"]]
        if len(runs) >= want or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)
