"""Idle footprint of ``igris run`` on a broker: RSS and CPU, against a bare-imports floor.

Figures (issue targets):

- idle RSS: ``igris run --broker mqtt://...`` after its broker is connected
  and 3 s have passed, VmRSS from /proc; floor: a process on the same
  interpreter that imports ``paho.mqtt.client``, ``nacl.signing``,
  ``psutil``, ``sqlite3`` and ``asyncio`` and sleeps. Target: agent / floor
  <= 1.25. The issue puts that floor at "about 28 MB here"; that is the
  figure measured on these machines for those imports with asyncio
  (shared notes, FINDINGS.md: 27.7 MB), and asyncio is the loop the
  architecture prescribes. The same imports without asyncio are printed
  too, with their ratio (context, not judged).
- idle CPU: CPU time the agent uses over ``--cpu-seconds`` (default 60), as
  % of one core: on-CPU time of all its threads from
  /proc/PID/task/*/schedstat (ns), with user + system ticks from
  /proc/PID/stat printed as a cross-check. Target: <= 0.5 %. The floor
  processes' CPU over the same window is printed next to it.

For context (not judged) it also prints a floor that imports the same and
keeps a paho client connected to the same broker.

``--agents`` agents (default 3) and as many floor processes run side by side,
each agent enrolled into its own fleet so none hears another; the figures
are medians over them. Each agent's RSS is read again at the end of the CPU
window (growth would show a leak)::

    python benchmarks/bench_footprint.py [--cpu-seconds 60] [--agents 3] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator

from _common import (
    BYTECODE_CHOICES,
    BYTECODE_HELP,
    AgentProc,
    BenchError,
    Janitor,
    Report,
    Target,
    cpu_seconds,
    cpu_ticks_seconds,
    make_ca,
    pre_enroll,
    python_floor,
    raise_on_sigterm,
    rss,
    use_bytecode_cache,
)

RSS_TARGET = 1.25
CPU_TARGET_PERCENT = 0.5
_IMPORTS = "import sqlite3, sys, time\nimport nacl.signing, psutil\nimport paho.mqtt.client\n"
_SLEEP = "print('ready', flush=True)\ntime.sleep(100000)\n"
FLOOR_CODE = _IMPORTS + "import asyncio\n" + _SLEEP
# Context only (not judged): the same imports without asyncio.
BARE_FLOOR_CODE = _IMPORTS + _SLEEP
# Context only (not judged): the least an asyncio agent on paho can be, i.e.
# the floor plus a paho client connected to the same broker
# (paho's network thread running, as the agent has its connect thread).
CONNECTED_FLOOR_CODE = """\
import asyncio, socket, sqlite3, sys, time
import nacl.signing, psutil
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="floor-connected",
                protocol=mqtt.MQTTv5)
c.connect(sys.argv[1], int(sys.argv[2]))
c.loop_start()
print("ready", flush=True)
time.sleep(100000)
"""


def measure(agents: int, settle_s: float, cpu_s: float, bytecode: str,
            log) -> dict:  # type: ignore[no-untyped-def]
    with Janitor() as jan:
        tmp = jan.tempdir("igfp")
        how = use_bytecode_cache(jan, bytecode)
        broker = jan.broker(tmp / "broker")
        log(f"bytecode: {how}; warm-up agent run")
        warm = AgentProc(jan.tempdir("ig"), broker.url, "fp-warm", tmp / "warm.log").start(jan)
        warm.wait_connected()
        time.sleep(1)
        warm.stop()
        log(f"broker {broker.url}; starting {agents} agents and {agents} floor processes")
        procs = []
        for i in range(agents):
            root = jan.tempdir("ig")
            pre_enroll(root, make_ca(tmp / f"ca{i}", f"fp{i}"), f"fp-{i}")
            procs.append(AgentProc(root, broker.url, f"fp-{i}", tmp / f"agent{i}.log")
                         .start(jan))
        floors = [python_floor(jan, FLOOR_CODE, tmp / f"floor{i}.log") for i in range(agents)]
        context = python_floor(jan, CONNECTED_FLOOR_CODE, tmp / "context.log",
                               broker.host, str(broker.port))
        bare = python_floor(jan, BARE_FLOOR_CODE, tmp / "bare.log")
        for agent in procs:
            agent.wait_connected()
        log(f"all connected; settling {settle_s:g} s")
        time.sleep(settle_s)

        agent_rss = [rss(a.pid) for a in procs]
        floor_rss = [rss(f.pid) for f in floors]
        context_rss = rss(context.pid)
        bare_rss = rss(bare.pid)

        log(f"idle CPU window {cpu_s:g} s")
        agent_tick0 = [cpu_ticks_seconds(a.pid) for a in procs]
        agent_cpu0 = [cpu_seconds(a.pid) for a in procs]
        floor_cpu0 = [cpu_seconds(f.pid) for f in floors]
        t0 = time.monotonic()
        time.sleep(cpu_s)
        agent_cpu1 = [cpu_seconds(a.pid) for a in procs]
        floor_cpu1 = [cpu_seconds(f.pid) for f in floors]
        window = time.monotonic() - t0
        agent_tick1 = [cpu_ticks_seconds(a.pid) for a in procs]
        agent_rss_end = [rss(a.pid) for a in procs]
        statuses = [a.status() for a in procs]
        for agent in procs:
            if agent.proc is not None and agent.proc.poll() is not None:
                raise BenchError(f"agent {agent.device_id} died:\n{agent.output()[-2000:]}")

    def pct(c0: list[float], c1: list[float]) -> list[float]:
        return [100 * (b - a) / window for a, b in zip(c0, c1, strict=True)]

    return {
        "agent_rss": agent_rss, "floor_rss": floor_rss, "agent_rss_end": agent_rss_end,
        "context_rss": context_rss, "bare_rss": bare_rss,
        "agent_cpu_percent": pct(agent_cpu0, agent_cpu1),
        "floor_cpu_percent": pct(floor_cpu0, floor_cpu1),
        "agent_cpu_ticks_percent": pct(agent_tick0, agent_tick1),
        "window_s": window,
        "bytecode": how,
        "heartbeats_sent": [s["heartbeats_sent"] for s in statuses],
        "messages_accepted": [s["messages"]["accepted"] for s in statuses],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status is 0 whether targets pass or miss; non-zero only on errors.",
    )
    parser.add_argument("--cpu-seconds", type=float, default=60.0,
                        help="idle CPU window in seconds (default 60)")
    parser.add_argument("--agents", type=int, default=3,
                        help="agents (and floor processes) measured side by side (default 3)")
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="wait after 'connected' before reading RSS (default 3)")
    parser.add_argument("--bytecode", choices=BYTECODE_CHOICES, default="cached",
                        help=BYTECODE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.agents < 1 or args.cpu_seconds <= 0:
        parser.error("--agents must be >= 1 and --cpu-seconds > 0")
    raise_on_sigterm()

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        m = measure(args.agents, args.settle_seconds, args.cpu_seconds, args.bytecode, log)
    except KeyboardInterrupt:
        print("interrupted; processes stopped and temp dirs removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    med = statistics.median
    a_rss = med(r["rss_mb"] for r in m["agent_rss"])
    f_rss = med(r["rss_mb"] for r in m["floor_rss"])
    a_cpu = med(m["agent_cpu_percent"])
    f_cpu = med(m["floor_cpu_percent"])
    report = Report("footprint")
    report.targets = [
        Target("idle RSS", a_rss, "MB", RSS_TARGET, "<=", "ratio", floor=f_rss,
               ratio=a_rss / f_rss, note=f"median of {args.agents}"),
        Target("idle CPU", a_cpu, "% core", CPU_TARGET_PERCENT, "<=", "value", floor=f_cpu,
               note=f"{m['window_s']:.0f} s window, median of {args.agents}"),
    ]
    report.details = {
        "agents": args.agents, "settle_s": args.settle_seconds, "bytecode": m["bytecode"],
        "cpu_window_s": round(m["window_s"], 2),
        "agent_rss": m["agent_rss"], "floor_rss": m["floor_rss"],
        "connected_asyncio_floor_rss": m["context_rss"],
        "floor_without_asyncio_rss": m["bare_rss"],
        "agent_rss_after_window": m["agent_rss_end"],
        "agent_cpu_percent": [round(x, 3) for x in m["agent_cpu_percent"]],
        "floor_cpu_percent": [round(x, 3) for x in m["floor_cpu_percent"]],
        "agent_cpu_percent_from_ticks": [round(x, 3) for x in m["agent_cpu_ticks_percent"]],
        "heartbeats_sent": m["heartbeats_sent"],
    }

    def lines() -> Iterator[str]:
        def mb(rows: list[dict[str, float]], key: str) -> str:
            return " ".join(f"{r[key]:5.1f}" for r in rows)

        yield f"idle RSS, MB (each process)   agent {mb(m['agent_rss'], 'rss_mb')}" \
              f"   floor {mb(m['floor_rss'], 'rss_mb')}"
        yield f"  anonymous                   agent {mb(m['agent_rss'], 'anon_mb')}" \
              f"   floor {mb(m['floor_rss'], 'anon_mb')}"
        yield f"  file-backed                 agent {mb(m['agent_rss'], 'file_mb')}" \
              f"   floor {mb(m['floor_rss'], 'file_mb')}"
        yield f"  agent after the CPU window  {mb(m['agent_rss_end'], 'rss_mb')}"
        ctx = m["context_rss"]["rss_mb"]
        yield f"  context: floor + connected paho client            {ctx:5.1f}  " \
              f"(agent / that = {a_rss / ctx:.2f})"
        bare_mb = m["bare_rss"]["rss_mb"]
        yield f"  context: floor without asyncio                    {bare_mb:5.1f}  " \
              f"(agent / that = {a_rss / bare_mb:.2f})"
        cpu = " ".join(f"{x:.3f}" for x in m["agent_cpu_percent"])
        fcpu = " ".join(f"{x:.3f}" for x in m["floor_cpu_percent"])
        ticks = " ".join(f"{x:.3f}" for x in m["agent_cpu_ticks_percent"])
        yield f"idle CPU over {m['window_s']:.1f} s, % of a core   agent {cpu}   floor {fcpu}"
        yield f"  agent, from 10 ms ticks     {ticks}"
        yield f"  heartbeats sent in the run  {m['heartbeats_sent']}"
        yield f"bytecode: {m['bytecode']}"

    report.print(args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
