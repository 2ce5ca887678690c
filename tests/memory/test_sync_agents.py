"""Memory sync between three real agent processes on Mosquitto: digests ride on
heartbeats, a difference starts mem.pull (a delta since the watermark, or a digest walk),
a member that was down catches up after its restart, and everyone converges again after
the broker was gone while each of them wrote."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.fleet import Fleet, run_cli

NAMES = ("n1", "n2", "n3")


@pytest.fixture
def fleet(broker):
    f = Fleet(broker, {name: ("east",) for name in NAMES}, args=("--target", "rpi4"))
    f.start_all()
    f.wait_all({name: "alive" for name in NAMES})
    yield f
    f.close()


def mem(fleet: Fleet, name: str, *args: str):
    return run_cli("mem", *args, "--root", str(fleet.base / name))


def put(fleet: Fleet, name: str, key: str, value: str) -> None:
    done = mem(fleet, name, "put", "notes", key, value)
    assert done.returncode == 0, done.stderr


def values(fleet: Fleet, name: str) -> dict:
    done = mem(fleet, name, "ls", "notes", "--json")
    assert done.returncode == 0, done.stderr
    return {doc["key"]: doc["value"] for doc in json.loads(done.stdout)["documents"]}


def wait_value(fleet: Fleet, name: str, key: str, want, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = mem(fleet, name, "get", "notes", key, "--json")
        if done.returncode == 0 and json.loads(done.stdout)["value"] == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {key} is not {want!r}: {done.stdout}{done.stderr}")
        time.sleep(0.2)


def wait_same(fleet: Fleet, want: dict, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = {name: values(fleet, name) for name in NAMES}
        if all(held == want for held in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged on {want}: {seen}")
        time.sleep(0.3)


def test_members_sync_over_heartbeats_and_catch_up_after_a_restart(fleet):
    assert mem(fleet, "n1", "put", "notes", "first", "1").returncode == 0
    done = mem(fleet, "n1", "share", "notes", "n2")  # n3 is not a member
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
    assert status["memory"]["sync"]["deltas"] >= 1  # by its watermark, kept across the restart
    assert mem(fleet, "n3", "get", "notes", "first").returncode != 0  # never had the key


def test_three_members_converge_through_a_broker_outage(fleet):
    put(fleet, "n1", "seed", "0")
    done = mem(fleet, "n1", "share", "notes", "n2", "n3")
    assert done.returncode == 0, done.stderr
    for name in ("n2", "n3"):
        wait_value(fleet, name, "seed", 0)
    # Concurrent writes to one key and to keys of their own, and a delete.
    for name in NAMES:
        put(fleet, name, "same", json.dumps(name))
        put(fleet, name, f"own/{name}", "1")
    assert mem(fleet, "n2", "rm", "notes", "seed").returncode == 0
    done = mem(fleet, "n1", "put", "notes", "brief", "1", "--ttl", "3s")
    assert done.returncode == 0, done.stderr
    wait_value(fleet, "n3", "brief", 1)  # then it expires everywhere (wait_same below)
    wait_same(fleet, {"same": values(fleet, "n3")["same"],
                      **{f"own/{name}": 1 for name in NAMES}})

    # The broker goes away; every device keeps writing on its own (a partition of all).
    fleet.broker.kill()
    for name in NAMES:
        put(fleet, name, f"offline/{name}", json.dumps(name))
    put(fleet, "n3", "same", '"n3 while cut off"')
    fleet.broker.restart()
    for agent in fleet.agents.values():
        agent.wait_for(lambda s: s["broker"]["connected"], timeout=20, what="reconnected")
    wait_same(fleet, {"same": "n3 while cut off", **{f"own/{name}": 1 for name in NAMES},
                      **{f"offline/{name}": name for name in NAMES}})
    for name in NAMES:
        sync = fleet.agents[name].status()["memory"]["sync"]
        assert sync["refused"] == 0 and sync["applied"] >= 4
