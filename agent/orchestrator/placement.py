"""Placement: which node runs a task, chosen from what membership knows of each node.

Two steps, so an operator can see why a node was passed over
(``igris task show``): a *filter* refuses nodes that may not run the task
(not alive, wrong device, missing a group or capability, battery, heat or CPU
over the policy's thresholds) and names the reason; a *score* ranks the rest
by load, CPU headroom, battery, thermal headroom and locality. Ties go to the
lowest device id, so every node that decides sees the same answer::

    limits = Thresholds.from_policy(policy.section("orchestration"))
    nodes = [NodeView.from_peer(p, running=busy.get(p.device_id, 0)) for p in peers]
    decision = place(spec.constraints, nodes, limits)   # a TaskSpec's Constraints
    decision.device     # "pi-03"
    decision.refused    # {"pi-01": "battery 12% < 25%", "pi-02": "missing cap 'tflite'"}

A figure a node does not report (no health yet, a board without a
thermometer) passes the filter but scores as if it sat exactly at its limit:
a node that reports a figure within the limit always scores at least as well.
Constraints arrive as :class:`~agent.orchestrator.models.Constraints`, checked
when the task was read, so placement never re-checks them.
Decisions take a few microseconds per node (``benchmarks/bench_placement.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigInvalid
from agent.orchestrator.models import Constraints

if TYPE_CHECKING:
    from agent.mesh import Peer

ALIVE = "alive"
# Degrees below the temperature limit at which thermal headroom counts as full.
THERMAL_SPAN_C = 30.0


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number; None (unknown) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _names(value: Any) -> frozenset[str]:
    """The strings in a collection of names; anything malformed counts as no names."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement knows of one node; None means the node did not report that figure.

    ``running`` is how many tasks the scheduler has leased to the node now;
    ``local`` marks this device (running here costs no network hop).
    """

    device_id: str
    state: str
    groups: frozenset[str] = frozenset()
    caps: frozenset[str] = frozenset()
    battery_percent: float | None = None
    plugged: bool | None = None
    max_celsius: float | None = None
    cpu_percent: float | None = None
    running: int = 0
    local: bool = False

    @classmethod
    def from_health(
        cls,
        device_id: str,
        state: str,
        health: Any,
        *,
        groups: Iterable[str] = (),
        caps: Iterable[str] = (),
        running: int = 0,
        local: bool = False,
    ) -> NodeView:
        """A view from a ``HealthReport.to_dict()``; missing or malformed facts are unknown.

        A report whose ``battery`` is null comes from a board without a battery,
        which runs on mains: it counts as plugged in.
        """
        if not isinstance(health, Mapping):
            health = {}
        battery = health.get("battery")
        percent: float | None = None
        plugged: bool | None = None
        if isinstance(battery, Mapping):
            percent = _number(battery.get("percent"))
            found = battery.get("plugged")
            plugged = found if isinstance(found, bool) else None
        elif "battery" in health and battery is None:
            plugged = True
        return cls(
            device_id=device_id,
            state=state,
            groups=_names(groups),
            caps=_names(caps),
            battery_percent=percent,
            plugged=plugged,
            max_celsius=_number(health.get("max_temperature_c")),
            cpu_percent=_number(health.get("cpu_percent")),
            running=running,
            local=local,
        )

    @classmethod
    def from_peer(cls, peer: Peer, *, running: int = 0, local: bool = False) -> NodeView:
        """A view of a peer from the membership table (health from ``peer.info["health"]``)."""
        info = peer.info if isinstance(peer.info, Mapping) else {}
        return cls.from_health(peer.device_id, peer.state, info.get("health"),
                               groups=peer.groups, caps=peer.caps, running=running, local=local)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits a node must be within to be given work (the policy's ``orchestration``).

    The defaults are those of the shipped policy; a task's ``constraints`` may
    override each one for that task (:meth:`with_constraints`).
    """

    min_battery_percent: float = 25.0
    max_celsius: float = 75.0
    max_cpu_percent: float = 85.0

    @classmethod
    def from_policy(cls, section: Mapping[str, Any] | None) -> Thresholds:
        """Thresholds from the policy's ``orchestration`` section; absent keys keep defaults.

        Raises ``ConfigInvalid`` for a value that is not a number (the policy
        schema refuses such a document before it is applied).
        """
        section = section or {}
        changes = {}
        for f in fields(cls):
            if f.name in section:
                value = _number(section[f.name])
                if value is None:
                    raise ConfigInvalid(f"policy orchestration: {f.name!r} must be a number, "
                                        f"got {section[f.name]!r:.40}")
                changes[f.name] = value
        return cls(**changes)

    def with_constraints(self, constraints: Constraints) -> Thresholds:
        """These thresholds with the ones a task's ``constraints`` set replaced."""
        changes = {name: float(value) for name in _OVERRIDABLE
                   if (value := getattr(constraints, name)) is not None}
        return replace(self, **changes) if changes else self


_OVERRIDABLE = tuple(f.name for f in fields(Thresholds))
"""Every threshold is also a field of Constraints of the same name."""


@dataclass(frozen=True, slots=True)
class Weights:
    """How much each fact counts in a node's score; each fact scores 0..1.

    The defaults sum to 1, so a score is between 0 and 1.
    """

    load: float = 0.35  # 1 / (1 + tasks running there)
    cpu: float = 0.2  # CPU headroom
    battery: float = 0.15  # charge; plugged in counts as full
    thermal: float = 0.15  # degrees below the limit, full at THERMAL_SPAN_C
    locality: float = 0.15  # the local node: no network hop


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a task goes (``device`` None: nowhere), the ranking and why others were refused."""

    device: str | None
    score: float | None
    ranked: list[tuple[str, float]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "score": None if self.score is None else round(self.score, 4),
            "ranked": [[dev, round(score, 4)] for dev, score in self.ranked],
            "refused": dict(self.refused),
        }


def _refusal(node: NodeView, device: str | None, groups: frozenset[str],
             caps: frozenset[str], limits: Thresholds) -> str | None:
    """Why ``node`` may not run the task, or None if it may."""
    if node.state != ALIVE:
        return f"state {node.state}"
    if device is not None and node.device_id != device:
        return f"not the requested device {device!r}"
    if groups and not groups <= node.groups:
        return f"not in group {min(groups - node.groups)!r}"
    if caps and not caps <= node.caps:
        return f"missing cap {min(caps - node.caps)!r}"
    percent = node.battery_percent
    if percent is not None and percent < limits.min_battery_percent and node.plugged is not True:
        return f"battery {percent:g}% < {limits.min_battery_percent:g}%"
    if node.max_celsius is not None and node.max_celsius > limits.max_celsius:
        return f"temperature {node.max_celsius:g} C > {limits.max_celsius:g} C"
    if node.cpu_percent is not None and node.cpu_percent > limits.max_cpu_percent:
        return f"cpu {node.cpu_percent:g}% > {limits.max_cpu_percent:g}%"
    return None


def _score(node: NodeView, limits: Thresholds, weights: Weights) -> float:
    """Each fact scored 0..1 and weighted; an unknown figure scores as if at its limit."""
    if node.plugged is True:
        battery = 1.0
    else:
        percent = node.battery_percent
        battery = (limits.min_battery_percent if percent is None else percent) / 100.0
    if node.max_celsius is None:
        thermal = 0.0
    else:
        thermal = (limits.max_celsius - node.max_celsius) / THERMAL_SPAN_C
    cpu = limits.max_cpu_percent if node.cpu_percent is None else node.cpu_percent
    return (weights.load / (1 + max(0, node.running))
            + weights.cpu * _unit(1.0 - cpu / 100.0)
            + weights.battery * _unit(battery)
            + weights.thermal * _unit(thermal)
            + (weights.locality if node.local else 0.0))


def _unit(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def place(
    constraints: Constraints,
    nodes: Iterable[NodeView],
    thresholds: Thresholds,
    weights: Weights = DEFAULT_WEIGHTS,
) -> Decision:
    """Choose the node for a task with these ``constraints`` (its spec's, already checked).

    An empty choice is not an error: ``Decision.device`` is None and
    ``refused`` says why.
    """
    device = constraints.device
    groups, caps = frozenset(constraints.groups), frozenset(constraints.caps)
    limits = thresholds.with_constraints(constraints)
    refused: dict[str, str] = {}
    ranked: list[tuple[str, float]] = []
    for node in nodes:
        reason = _refusal(node, device, groups, caps, limits)
        if reason is None:
            ranked.append((node.device_id, _score(node, limits, weights)))
        else:
            refused[node.device_id] = reason
    ranked.sort(key=lambda pair: (-pair[1], pair[0]))
    if not ranked:
        return Decision(None, None, ranked, refused)
    return Decision(ranked[0][0], ranked[0][1], ranked, refused)
