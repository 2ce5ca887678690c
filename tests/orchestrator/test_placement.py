"""Placement: the filter names why a node was refused, the score ranks the rest."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from agent.device.health import BatteryReading, HealthReport
from agent.errors import ConfigInvalid
from agent.mesh import Peer
from agent.orchestrator import Constraints, TaskSpec
from agent.orchestrator.placement import NodeView, Thresholds, Weights, place

REPO = Path(__file__).resolve().parents[2]
LIMITS = Thresholds(min_battery_percent=25, max_celsius=75, max_cpu_percent=85)
ANYWHERE = Constraints()


def health(cpu: float | None = 20.0, celsius: float | None = 50.0,
           battery: BatteryReading | None = None) -> dict[str, Any]:
    """The dict a real device puts in its state message."""
    return HealthReport(
        taken_at=1.0, status="healthy", reasons=(), cpu_percent=cpu, memory_used_mb=100.0,
        memory_total_mb=1000.0, memory_percent=10.0, process_rss_mb=30.0,
        load_average=(0.1, 0.1, 0.1), temperatures_c={} if celsius is None else
        {"cpu-thermal": celsius}, max_temperature_c=celsius, throttle=None, battery=battery,
        gpio={},
    ).to_dict()


def peer(dev: str, state: str = "alive", info: Any = None, **kw: Any) -> Peer:
    return Peer(dev, state, 1, 0, 0, groups=kw.get("groups", ()), caps=kw.get("caps", ()),
                info={"health": health()} if info is None else info)


def node(dev: str, **kw: Any) -> NodeView:
    facts: dict[str, Any] = {"state": "alive", "cpu_percent": 20.0, "max_celsius": 50.0,
                             "plugged": True}
    facts.update(kw)
    return NodeView(dev, **facts)


def test_from_peer_reads_the_health_report_a_peer_announced() -> None:
    report = health(cpu=42.5, celsius=61.0, battery=BatteryReading(55.0, False, "psutil"))
    view = NodeView.from_peer(peer("pi-02", info={"health": report}, groups=("kitchen",),
                                   caps=("tflite", "camera")), running=3)
    assert view == NodeView("pi-02", "alive", frozenset({"kitchen"}),
                            frozenset({"tflite", "camera"}), battery_percent=55.0,
                            plugged=False, max_celsius=61.0, cpu_percent=42.5, running=3)


def test_board_without_a_battery_counts_as_on_mains() -> None:
    view = NodeView.from_peer(peer("pi-02", info={"health": health(battery=None)}))
    assert (view.battery_percent, view.plugged) == (None, True)


@pytest.mark.parametrize("info", [
    {},
    {"health": "broken"},
    {"health": {"cpu_percent": "high", "max_temperature_c": float("nan"),
                "battery": {"percent": True, "plugged": "yes"}}},
    {"health": {"battery": [1, 2]}},
    "not a dict",
])
def test_missing_or_malformed_health_reads_as_unknown(info: Any) -> None:
    view = NodeView.from_peer(peer("pi-02", info=info))
    assert (view.battery_percent, view.plugged, view.max_celsius, view.cpu_percent) == (
        None, None, None, None)
    assert place(ANYWHERE, [view], LIMITS).device == "pi-02"


def test_nodes_that_are_not_alive_are_refused_by_state() -> None:
    decision = place(ANYWHERE, [node("a", state="dead"), node("b", state="suspect"), node("c")],
                     LIMITS)
    assert decision.device == "c"
    assert decision.refused == {"a": "state dead", "b": "state suspect"}


def test_device_constraint_allows_only_that_device() -> None:
    decision = place(Constraints(device="b"), [node("a"), node("b"), node("c")], LIMITS)
    assert decision.device == "b"
    assert [dev for dev, _ in decision.ranked] == ["b"]
    assert decision.refused["a"] == "not the requested device 'b'"


def test_groups_and_caps_must_all_be_held_and_the_missing_one_is_named() -> None:
    nodes = [node("a", groups=frozenset({"kitchen"}), caps=frozenset({"camera"})),
             node("b", groups=frozenset({"hall"}), caps=frozenset({"tflite", "camera"})),
             node("c", groups=frozenset({"kitchen", "hall"}), caps=frozenset({"tflite"}))]
    spec = TaskSpec.from_dict({"id": "t", "kind": "infer",
                               "constraints": {"groups": ["kitchen"], "caps": ["tflite"]}})
    decision = place(spec.constraints, nodes, LIMITS)
    assert decision.device == "c"
    assert decision.refused == {"a": "missing cap 'tflite'", "b": "not in group 'kitchen'"}


def test_low_battery_is_refused_unless_plugged_in() -> None:
    nodes = [node("a", battery_percent=12.0, plugged=False),
             node("b", battery_percent=12.0, plugged=True),
             node("c", battery_percent=12.0, plugged=None)]
    decision = place(ANYWHERE, nodes, LIMITS)
    assert decision.refused == {"a": "battery 12% < 25%", "c": "battery 12% < 25%"}
    assert decision.device == "b"


def test_hot_and_busy_nodes_are_refused_by_the_policy_thresholds() -> None:
    nodes = [node("hot", max_celsius=81.5), node("busy", cpu_percent=92.0), node("ok")]
    decision = place(ANYWHERE, nodes, LIMITS)
    assert decision.refused == {"hot": "temperature 81.5 C > 75 C", "busy": "cpu 92% > 85%"}
    assert decision.device == "ok"


def test_task_constraints_override_the_policy_thresholds() -> None:
    nodes = [node("warm", max_celsius=70.0), node("low", battery_percent=40.0, plugged=False)]
    strict = place(Constraints(max_celsius=65, min_battery_percent=50), nodes, LIMITS)
    assert strict.device is None
    assert strict.refused == {"warm": "temperature 70 C > 65 C", "low": "battery 40% < 50%"}
    assert place(ANYWHERE, nodes, LIMITS).device is not None


def test_unknown_figures_pass_but_score_below_any_reported_figure_within_limits() -> None:
    unknown = node("a-unknown", cpu_percent=None, max_celsius=None, plugged=None)
    # Every figure right at its limit: the worst a reporting node can be and still pass.
    at_limit = node("z-at-limit", cpu_percent=85.0, max_celsius=75.0, battery_percent=25.0,
                    plugged=False)
    decision = place(ANYWHERE, [unknown, at_limit], LIMITS)
    assert decision.ranked[0][1] == decision.ranked[1][1]
    assert decision.device == "a-unknown"  # equal scores: the lower device id
    better = node("z-better", cpu_percent=84.0, max_celsius=74.0, battery_percent=26.0,
                  plugged=False)
    assert place(ANYWHERE, [unknown, better], LIMITS).device == "z-better"


def test_fewer_running_tasks_and_more_headroom_rank_first() -> None:
    nodes = [node("busy", running=4), node("idle", running=0), node("some", running=1)]
    assert [dev for dev, _ in place(ANYWHERE, nodes, LIMITS).ranked] == ["idle", "some", "busy"]
    cool = [node("warm", max_celsius=70.0), node("cool", max_celsius=40.0)]
    assert place(ANYWHERE, cool, LIMITS).device == "cool"
    charged = [node("half", battery_percent=50.0, plugged=False),
               node("full", battery_percent=95.0, plugged=False)]
    assert place(ANYWHERE, charged, LIMITS).device == "full"


def test_the_local_node_wins_an_otherwise_even_choice() -> None:
    decision = place(ANYWHERE, [node("a"), node("b", local=True), node("c")], LIMITS)
    assert decision.device == "b"
    assert decision.ranked[0][1] - decision.ranked[1][1] == pytest.approx(Weights().locality)


def test_locality_does_not_outweigh_a_heavy_load() -> None:
    nodes = [node("here", local=True, running=5, cpu_percent=80.0), node("there")]
    decision = place(ANYWHERE, nodes, LIMITS)
    assert decision.device == "there"


def test_ties_break_by_device_id_whatever_the_order_of_nodes() -> None:
    nodes = [node(f"pi-{i:02d}") for i in range(20)]
    for seed in range(5):
        random.Random(seed).shuffle(nodes)
        decision = place(ANYWHERE, nodes, LIMITS)
        assert decision.device == "pi-00"
        assert [dev for dev, _ in decision.ranked] == [f"pi-{i:02d}" for i in range(20)]


def test_no_candidate_means_no_device_and_a_reason_for_each_node() -> None:
    decision = place(Constraints(caps=("gpu",)), [node("a"), node("b", state="left")], LIMITS)
    assert (decision.device, decision.score, decision.ranked) == (None, None, [])
    assert decision.to_dict() == {"device": None, "score": None, "ranked": [],
                                  "refused": {"a": "missing cap 'gpu'", "b": "state left"}}


def test_thresholds_come_from_the_shipped_policy_and_default_when_absent() -> None:
    policy = json.loads((REPO / "ai_assistant_config" / "policy.json").read_text())
    section = policy["orchestration"]
    assert Thresholds.from_policy(section) == Thresholds(
        section["min_battery_percent"], section["max_celsius"], section["max_cpu_percent"])
    assert Thresholds.from_policy({"max_celsius": 60}) == Thresholds(max_celsius=60)
    assert Thresholds.from_policy(None) == Thresholds()


def test_a_threshold_that_is_not_a_number_is_refused_naming_it() -> None:
    with pytest.raises(ConfigInvalid, match="policy orchestration: 'max_celsius' must be a "
                                            "number, got 'hot'"):
        Thresholds.from_policy({"max_celsius": "hot"})
