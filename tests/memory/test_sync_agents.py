"""Memory sync between real agent processes on Mosquitto: digests ride on heartbeats, a
difference starts mem.pull, and a member that was down catches up after its restart."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.fleet import Fleet, run_cli


@pytest.fixture
def fleet(broker):
    f = Fleet(broker, {"n1": ("east",), "n2": ("east",)}, args=("--target", "rpi4"))
    f.start_all()
    f.wait_all({"n1": "alive", "n2": "alive"})
    yield f
    f.close()


def mem(fleet: Fleet, name: str, *args: str):
    return run_cli("mem", *args, "--root", str(fleet.base / name))


def wait_value(fleet: Fleet, name: str, key: str, want, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = mem(fleet, name, "get", "notes", key, "--json")
        if done.returncode == 0 and json.loads(done.stdout)["value"] == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {key} is not {want!r}: {done.stdout}{done.stderr}")
        time.sleep(0.2)


def test_members_sync_over_heartbeats_and_catch_up_after_a_restart(fleet):
    assert mem(fleet, "n1", "put", "notes", "first", "1").returncode == 0
    done = mem(fleet, "n1", "share", "notes", "n2")
    assert done.returncode == 0, done.stderr
    wait_value(fleet, "n2", "first", 1)
    assert mem(fleet, "n2", "put", "notes", "from-n2", '"hi"').returncode == 0
    wait_value(fleet, "n1", "from-n2", "hi")

    # n2 is down while n1 writes and deletes; after its restart it catches up.
    fleet.agents["n2"].stop()
    assert mem(fleet, "n1", "put", "notes", "while-down", "2").returncode == 0
    assert mem(fleet, "n1", "rm", "notes", "first").returncode == 0
    fleet.start("n2").wait_ready()
    wait_value(fleet, "n2", "while-down", 2)
    listing = mem(fleet, "n2", "ls", "notes").stdout
    assert "first" not in listing and "from-n2" in listing
    status = fleet.agents["n2"].status()
    assert status["memory"]["sync"]["applied"] == 2  # only what changed travelled
