"""A placement decision over 200 known nodes, against a bare loop over the same nodes.

Target (issue 7): ``place`` over 200 nodes takes <= 1 ms (median). The
nodes have varied facts, as a real fleet's membership table would: some
suspect or dead, two groups and two capabilities each out of three, batteries
(absent, plugged, or at any charge), temperatures and CPU loads (reported or
unknown), a few running tasks, one local node. Two task shapes: no
constraints (every live node is scored: the figure judged) and a group plus
a capability (most nodes refused with a reason).

The floor is the raw interpreter: a plain ``for`` loop over the same 200
``NodeView`` objects making one comparison each. Timings are per call, the
figure's and the floor's batches alternating so machine load hits both::

    python benchmarks/bench_placement.py [--seconds 2] [--nodes 200] [--json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator

from _common import Report, Target, raise_on_sigterm

from agent.orchestrator import Constraints
from agent.orchestrator.placement import NodeView, Thresholds, place

TARGET_MS = 1.0
GROUPS = ("kitchen", "hall", "lab")
CAPS = ("tflite", "camera", "gpio")
OPEN = Constraints()
CONSTRAINED = Constraints(groups=("kitchen",), caps=("tflite",))


def fleet(count: int, seed: int = 7) -> list[NodeView]:
    """``count`` nodes with varied facts, the same for a given seed."""
    rng = random.Random(seed)
    nodes = []
    for i in range(count):
        plugged = rng.choice((None, True, False))
        nodes.append(NodeView(
            device_id=f"pi-{i:03d}",
            state=rng.choices(("alive", "suspect", "dead"), weights=(90, 5, 5))[0],
            groups=frozenset(rng.sample(GROUPS, 2)),
            caps=frozenset(rng.sample(CAPS, 2)),
            battery_percent=None if plugged is None else round(rng.uniform(5, 100), 1),
            plugged=plugged,
            max_celsius=rng.choice((None, round(rng.uniform(35, 85), 1))),
            cpu_percent=rng.choice((None, round(rng.uniform(0, 100), 1))),
            running=rng.randrange(6),
            local=i == 0,
        ))
    return nodes


def paired_medians(run: Callable[[], object], floor: Callable[[], object],
                   seconds: float) -> tuple[float, float]:
    """Median seconds per call of each, timed in alternating batches of 50 calls."""
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for fn, out in ((run, times[0]), (floor, times[1])):
            for _ in range(50):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="time per task shape, split between figure and floor (default 2)")
    parser.add_argument("--nodes", type=int, default=200, help="known nodes (default 200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    raise_on_sigterm()

    nodes = fleet(args.nodes)
    limits = Thresholds()

    def bare_loop() -> int:
        hits = 0
        for node in nodes:
            if node.running < 3:
                hits += 1
        return hits

    try:
        open_ms, floor_ms = (s * 1e3 for s in paired_medians(
            lambda: place(OPEN, nodes, limits), bare_loop, args.seconds))
        constrained_ms, constrained_floor_ms = (s * 1e3 for s in paired_medians(
            lambda: place(CONSTRAINED, nodes, limits), bare_loop, args.seconds))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    scored = len(place(OPEN, nodes, limits).ranked)
    constrained_scored = len(place(CONSTRAINED, nodes, limits).ranked)

    report = Report("placement")
    report.targets = [
        Target(f"placement decision ({args.nodes} nodes, no constraints)", open_ms, "ms",
               TARGET_MS, "<=", "value", floor=floor_ms, ratio=open_ms / floor_ms,
               note=f"{scored} nodes scored, the rest refused; floor: bare loop, one "
                    "comparison per NodeView"),
        Target(f"placement decision ({args.nodes} nodes, group + cap)", constrained_ms, "ms",
               TARGET_MS, "<=", "value", floor=constrained_floor_ms,
               ratio=constrained_ms / constrained_floor_ms,
               note=f"{constrained_scored} nodes scored"),
    ]
    report.details = {"nodes": args.nodes, "scored": scored,
                      "constrained_scored": constrained_scored,
                      "open_ms": round(open_ms, 4), "constrained_ms": round(constrained_ms, 4),
                      "floor_ms": round(floor_ms, 5)}

    def lines() -> Iterator[str]:
        yield (f"place, no constraints   {open_ms * 1e3:8.1f} us  ({scored} of {args.nodes} "
               f"scored)   bare loop {floor_ms * 1e3:6.1f} us   ratio {open_ms / floor_ms:.1f}")
        yield (f"place, group + cap      {constrained_ms * 1e3:8.1f} us  "
               f"({constrained_scored} of {args.nodes} scored)   bare loop "
               f"{constrained_floor_ms * 1e3:6.1f} us   "
               f"ratio {constrained_ms / constrained_floor_ms:.1f}")

    report.print(args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
