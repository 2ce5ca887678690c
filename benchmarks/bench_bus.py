"""Command bus: fan-out with all replies to K agents, and signed commands per second to one.

Figures (issue 4), each printed with a floor measured in the same run on the
same broker, and the ratio:

- **fan-out with all replies**: an operator's ``bus.request("all", "ping",
  mode="all")`` to a mesh of K agents (``--sizes``, default 50 and 200);
  the median over ``--rounds`` of the time from the call to its return with
  every reply in. The expected set comes from the operator's membership,
  which has seen all K alive before the first request. Floor: raw paho-mqtt,
  one QoS 1 publish (the bus publishes requests and replies at QoS 1, so the
  floor does too; MQTT 5 with a response topic and correlation data, as the
  bus) to K raw paho echo clients, each replying at QoS 1 to the response
  topic, timed until all K replies are back; request and reply payloads as
  large as the bus's. **Target: Igris / floor <= 2.** Floor and Igris rounds
  alternate on the same broker with both populations up, so drift and
  background load hit both alike; each round starts once the agent helpers
  are quiet (the K agents' heartbeats come in bursts: see
  ``FanoutRun.quiet``).
- **the same against Serf** (``--serf-sizes``, default as ``--sizes``):
  ``serf query ping`` from one more Serf agent to N agents that each answer
  with an event handler (``-event-handler query:ping=echo pong``, Serf's way
  of answering a query), timed from the CLI's "dispatched" line to the last
  "Response from" line it streams (``serf query`` itself returns only at its
  timeout; the bench kills it once all N answered). Printed side by side
  with Igris (ratio), not judged. A cluster that does not form is started
  afresh once.
- **signed commands per second, one device**: one agent (a ``Runtime`` with
  its real CommandServer, ledger and MQTT connection, alone in a helper
  process) and an operator's ``Bus`` in this process keeping ``--inflight``
  (default 32) ``bus.request(dev, "ping")`` calls in flight; completed
  replies per second over ``--seconds`` (after a 1 s warm-up), median of
  ``--reps`` windows. **Target:
  >= 1000/s.** Context (not judged): raw paho QoS 1 request/response between
  two clients on the same broker with as many requests in flight.

The Igris side reuses ``bench_membership.py``: a Mosquitto on loopback (no
persistence), a fleet CA, K roots enrolled in one group, the K agents as
``agent.runtime.Runtime`` objects in ``--procs`` helper processes (default 2,
one per core), each with its own MQTT connection. The operator is an
operator-role root in an operator session (``agent.cli.operator_session``,
as ``igris cmd`` uses) with a fleet-scope ``Membership`` and a ``Bus``. The
raw echo clients run in as many helper processes, driven by one thread each
(paho's external-loop API over a selector). The broker gets
``max_inflight_messages 0`` and ``max_queued_messages 10000`` so a burst of
K replies to one client is neither throttled at 20 in flight nor dropped
(``--broker-defaults`` keeps the test broker's). The CPU each round and
window costs is reported for both sides: the responders' processes (less
their idle rate), the caller (this process), the broker, and other
processes on the machine (``/proc/stat`` less ours: the VM may be shared).
``--profile DIR`` writes a cProfile of each agent helper (from the formed
mesh to the end) and prints the top functions::

    python benchmarks/bench_bus.py [--sizes 50 200] [--rounds 20] [--serf-sizes 50 200]
                                   [--inflight 32] [--seconds 3] [--reps 3] [--procs 2]
                                   [--skip-serf] [--skip-rate] [--broker-defaults]
                                   [--profile DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pstats
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

from _common import (
    BYTECODE_CHOICES,
    BYTECODE_HELP,
    CLK_TCK,
    BenchError,
    Janitor,
    Report,
    Target,
    cpu_seconds,
    python_floor,
    raise_on_sigterm,
    use_bytecode_cache,
)
from _serf import SerfCluster, serf_version
from bench_membership import IgrisMesh

HERE = Path(__file__).resolve().parent
FANOUT_TARGET_RATIO = 2.0
RATE_TARGET = 1000.0
QOS = 1  # the bus publishes requests and replies at QoS 1; so does the floor
FLOOR = "floor"  # the raw clients' topic prefix
# Mosquitto holds a burst of K replies to one client at 20 unacknowledged by default, and
# drops past max_queued_messages (1000 by default; the test broker sets 10000). Both sides
# run on this broker.
BROKER_CONFIG = "max_inflight_messages 0\nmax_queued_messages 10000\n"
SERF_HANDLER = ("-event-handler", "query:ping=echo pong")
_SERF_LINE = re.compile(r"^(Ack|Response) from '([^']+)'")
WARMUP_ROUNDS = 2
IDLE_NOISY = 0.1  # idle helpers above this share of a core make per-round CPU unreliable
# Before each round, every agent helper must have used less than this share of a core
# over QUIET_WINDOW_S: heartbeats of agents started together come in bursts (see
# FanoutRun.quiet).
QUIET_SHARE = 0.25
QUIET_WINDOW_S = 0.05
QUIET_MAX_WAIT_S = 15.0
IDLE_WINDOWS = 20

# A floor helper: ``python -c FLOOR_ECHO_CODE host port qos id...`` runs
# floor_echo_main() below (K raw paho echo clients); prints "up" once all are
# subscribed.
FLOOR_ECHO_CODE = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_bus; "
                   "sys.exit(bench_bus.floor_echo_main(sys.argv[1:]))")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- raw paho floor


def _nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    import socket

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def floor_echo_main(argv: list[str]) -> int:
    """``host port qos id...``: K raw paho echo clients in this process (see _EchoClients).

    Ctrl-C is the bench's to handle: it stops us (SIGTERM) when it cleans up, and we also
    stop when it is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    clients = _EchoClients(argv[0], int(argv[1]), int(argv[2]), argv[3:])
    return clients.serve(parent=os.getppid())


class _EchoClients:
    """K raw paho clients in one thread (paho's external-loop API over a selector), each
    echoing a request to its response topic.

    A request's payload starts with the reply size in ASCII and a newline;
    the reply is the client's id and a newline, padded to that size, with the
    request's correlation data.
    """

    def __init__(self, host: str, port: int, qos: int, ids: list[str]):
        import selectors

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.qos = qos
        self.unsubscribed = set(ids)
        self.sel = selectors.DefaultSelector()
        self.clients = []
        for dev in ids:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv5,
                            userdata=dev)
            c.suppress_exceptions = False
            c.on_socket_open = _nodelay
            c.on_connect, c.on_subscribe = self._on_connect, self._on_subscribe
            c.on_disconnect, c.on_message = self._on_disconnect, self._on_message
            c.connect(host, port, keepalive=60)
            self.sel.register(c.socket(), selectors.EVENT_READ, c)
            self.clients.append(c)

    def serve(self, parent: int) -> int:
        """Until the parent process is gone; prints "up" once every client is subscribed."""
        announced = False
        last_misc = time.monotonic()
        while True:
            for key, _events in self.sel.select(timeout=0.5):
                c = key.data
                c.loop_read()
                if c.want_write():  # publishes made in a callback wait for us to write
                    c.loop_write()
            if not announced and not self.unsubscribed:
                print("up", flush=True)
                announced = True
            if time.monotonic() - last_misc >= 1.0:
                last_misc = time.monotonic()
                for c in self.clients:
                    c.loop_misc()
                    if c.want_write():
                        c.loop_write()
                if os.getppid() != parent:
                    return 0

    def _on_connect(self, client: Any, dev: str, _flags: Any, reason: Any, _props: Any) -> None:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if reason.is_failure:
            raise SystemExit(f"{dev}: broker refused the connection: {reason}")
        client.subscribe([(f"{FLOOR}/req/all", SubscribeOptions(qos=self.qos)),
                          (f"{FLOOR}/req/{dev}", SubscribeOptions(qos=self.qos))])

    def _on_subscribe(self, _client: Any, dev: str, _mid: int, _reasons: Any,
                      _props: Any) -> None:
        self.unsubscribed.discard(dev)

    @staticmethod
    def _on_disconnect(_client: Any, dev: str, *_args: Any) -> None:
        raise SystemExit(f"{dev}: lost the broker")

    def _on_message(self, client: Any, dev: str, msg: Any) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if not reply_to:
            return
        size = int(msg.payload.split(b"\n", 1)[0])
        props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation is not None:
            props.CorrelationData = correlation
        client.publish(reply_to, f"{dev}\n".encode().ljust(size, b"."), self.qos,
                       properties=props)


class FloorEcho:
    """K raw echo clients in ``procs`` processes (``floor_echo_main``), owned by the janitor."""

    def __init__(self, jan: Janitor, tmp: Path, host: str, port: int, ids: list[str],
                 procs: int):
        self.ids = ids
        self.procs = []
        for i in range(max(1, min(procs, len(ids)))):
            self.procs.append(python_floor(jan, FLOOR_ECHO_CODE, tmp / f"echo{i}.log", host,
                                           str(port), str(QOS), *ids[i::procs]))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise BenchError(f"a floor echo process exited with {p.returncode}")


class FloorRequester:
    """The raw side's caller: one paho client (its own network thread, as paho is most often
    used), QoS 1, MQTT 5 with a response topic; also records the sizes of the bus's messages
    on the topics it is told to watch."""

    def __init__(self, host: str, port: int, client_id: str = "floor-requester"):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        self.sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._round: dict[str, Any] | None = None
        self._rate: dict[str, Any] | None = None
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_socket_open = _nodelay
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        self.client.subscribe(f"{FLOOR}/reply/#", qos=QOS)
        if not subscribed.wait(10):
            raise BenchError("the floor requester got no SUBACK within 10 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(self, topic: str, reply_to: str, size: int, reply_size: int) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_to
        props.CorrelationData = reply_to.encode()
        self.client.publish(topic, f"{reply_size}\n".encode().ljust(size, b"."), QOS,
                            properties=props)

    # -- the bus's message sizes, so the floor moves as many bytes

    def watch(self, *filters: str) -> None:
        for f in filters:
            self.client.subscribe(f, qos=0)

    def unwatch(self, *filters: str) -> None:
        for f in filters:
            self.client.unsubscribe(f)

    # -- messages (paho's network thread)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        topic = msg.topic
        if not topic.startswith(FLOOR + "/"):
            kind = "request" if "/cmd/" in topic else "reply"
            with self._lock:
                self.sizes[kind] = max(self.sizes.get(kind, 0), len(msg.payload))
            return
        rnd = self._round
        if rnd is not None and topic == rnd["reply_to"]:
            rnd["from"].add(msg.payload.split(b"\n", 1)[0])
            rnd.setdefault("first", now)
            if len(rnd["from"]) == rnd["k"] and rnd["done"] is None:
                rnd["done"] = now
                rnd["loop"].call_soon_threadsafe(rnd["future"].set_result, now)
            return
        rate = self._rate
        if rate is not None and topic == rate["reply_to"]:
            rate["times"].append(now)
            if now < rate["stop"]:
                self._publish(rate["topic"], rate["reply_to"], rate["size"], rate["reply_size"])

    # -- the two measures

    async def fanout(self, k: int, n: int, sizes: dict[str, int],
                     timeout: float) -> tuple[float, float]:
        """One publish to all echo clients; seconds until the first and until ``k`` distinct
        replies are back."""
        loop = asyncio.get_running_loop()
        reply_to = f"{FLOOR}/reply/fan{n}"
        future = loop.create_future()
        self._round = {"reply_to": reply_to, "k": k, "from": set(), "done": None,
                       "loop": loop, "future": future}
        t0 = time.perf_counter()
        self._publish(f"{FLOOR}/req/all", reply_to, sizes["request"], sizes["reply"])
        rnd = self._round
        try:
            done = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise BenchError(f"floor fan-out: {len(rnd['from'])} of {k} replies within "
                             f"{timeout:g} s; the broker dropped or throttled the burst?") from None
        finally:
            self._round = None
        return done - t0, rnd["first"] - t0

    async def rate(self, dev: str, inflight: int, warmup: float, seconds: float,
                   sizes: dict[str, int]) -> dict[str, Any]:
        """``inflight`` requests kept in flight to one echo client; replies per second."""
        start = time.perf_counter()
        self._rate = {"reply_to": f"{FLOOR}/reply/rate", "topic": f"{FLOOR}/req/{dev}",
                      "size": sizes["request"], "reply_size": sizes["reply"], "times": [],
                      "stop": start + warmup + seconds}
        for _ in range(inflight):
            self._publish(self._rate["topic"], self._rate["reply_to"], sizes["request"],
                          sizes["reply"])
        await asyncio.sleep(warmup + seconds + 0.5)  # then the last ones drain
        times, self._rate = self._rate["times"], None
        window = [t for t in times if start + warmup <= t < start + warmup + seconds]
        return {"per_s": len(window) / seconds, "replies": len(times)}


# --------------------------------------------------------------------------- the operator


@contextlib.asynccontextmanager
async def operator_bus(root: Path, broker: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """An operator's session, fleet-scope membership and Bus, as ``igris cmd`` builds them."""
    from agent.bus import Bus
    from agent.cli.operator_session import operator_session
    from agent.compat import wall_ms
    from agent.db import Database
    from agent.mesh import Membership

    async with operator_session(root, broker=broker) as session:
        db = Database.open(Path(":memory:"))
        membership = Membership(session.channel, session.topics, db, scope="fleet",
                                suspect_after_s=30, dead_after_s=90, now_ms=wall_ms,
                                announce=False)
        try:
            await membership.start()
            bus = Bus(session.channel, session.topics, membership=membership,
                      serves_commands=False)
            await bus.start()
            try:
                yield session, membership, bus
            finally:
                await bus.stop()
                await membership.stop()
        finally:
            db.close()


async def wait_alive(membership: Any, names: list[str], timeout: float,
                     check: Any = lambda: None) -> float:
    """Poll until ``membership`` has every one of ``names`` alive; returns seconds waited."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    want = set(names)
    while True:
        alive = {p.device_id for p in membership.peers() if p.state == "alive"}
        if want <= alive:
            return loop.time() - t0
        check()
        if loop.time() - t0 > timeout:
            raise BenchError(f"the operator saw {len(want & alive)} of {len(want)} agents alive "
                             f"after {timeout:g} s")
        await asyncio.sleep(0.05)


class CpuMeter:
    """On-CPU seconds of a set of processes (``_common.cpu_seconds``)."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def read(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def idle_rate(self, window_s: float = 0.1) -> float:
        """CPU seconds per second over ``window_s`` while nothing is asked of them."""
        c0, t0 = self.read(), time.perf_counter()
        await asyncio.sleep(window_s)
        return (self.read() - c0) / (time.perf_counter() - t0)


class MachineMeter:
    """Busy CPU seconds of the whole machine (``/proc/stat``: all but idle and iowait), to see
    how much other processes took while we measured (the VM may be shared)."""

    def read(self) -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


# --------------------------------------------------------------------------- fan-out


def measure_fanout(jan: Janitor, k: int, *, rounds: int, procs: int, keepalive: int,
                   broker_config: str, gap_s: float, timeout: float,
                   profile: Path | None) -> dict[str, Any]:
    """K agents and K raw echo clients on one broker; ``rounds`` alternating fan-outs each."""
    spec = {"profile": str(profile)} if profile else None
    mesh = IgrisMesh(jan, nodes=k, procs=procs, keepalive=keepalive,
                     broker_config=broker_config, helper_spec=spec)
    log(f"fan-out K={k}: broker {mesh.broker.url}; {k} runtimes in {mesh.procs} processes")
    formed = mesh.form(timeout)
    log(f"fan-out K={k}: the {k} runtimes see each other {formed:.2f} s after the first start")
    echo = FloorEcho(jan, mesh.tmp, mesh.broker.host, mesh.broker.port,
                     [f"e{i:03d}" for i in range(k)], procs)
    requester = FloorRequester(mesh.broker.host, mesh.broker.port)
    jan.callback(requester.close)
    run = FanoutRun(mesh, echo, requester, gap_s=gap_s, timeout=timeout)
    out = asyncio.run(run.run(mesh.enroll("bench-operator", role="operator"), rounds))
    out.update(k=k, procs=mesh.procs, formed_s=formed)
    return out


class FanoutRun:
    """The fan-out rounds, Igris and raw alternating, with the CPU each round cost."""

    def __init__(self, mesh: IgrisMesh, echo: FloorEcho, requester: FloorRequester, *,
                 gap_s: float, timeout: float):
        self.mesh, self.echo, self.requester = mesh, echo, requester
        self.k, self.gap_s, self.timeout = mesh.nodes, gap_s, timeout
        helpers = [h.proc.pid for h in mesh.helpers]
        broker = mesh.broker.proc.pid
        self.cpu = {"igris": CpuMeter(helpers), "floor": CpuMeter(echo.pids),
                    "caller": CpuMeter([os.getpid()]), "broker": CpuMeter([broker]),
                    "ours": CpuMeter([*helpers, *echo.pids, os.getpid(), broker])}
        self.machine = MachineMeter()
        self.idle = {"igris": 0.0, "floor": 0.0}
        self.helper_cpu = [CpuMeter([pid]) for pid in helpers]
        self.sizes: dict[str, int] = {}
        self.bus: Any = None

    def check(self) -> None:
        self.mesh.check_helpers()
        self.echo.check()

    async def run(self, operator: Path, rounds: int) -> dict[str, Any]:
        k, requester = self.k, self.requester
        async with operator_bus(operator, self.mesh.broker.url) as (session, membership, bus):
            self.bus = bus
            seen = await wait_alive(membership, self.mesh.observers, self.timeout, self.check)
            log(f"fan-out K={k}: the operator sees all {k} alive ({seen:.2f} s after it "
                "connected)")
            me = session.identity.device_id
            watched = (session.topics.cmd_all(), session.topics.filter("reply", me, "+"))
            requester.watch(*watched)
            await asyncio.sleep(0.2)
            for side in self.idle:  # the median of short windows between heartbeat bursts
                rates = []
                for _ in range(IDLE_WINDOWS):
                    await self.quiet()
                    rates.append(await self.cpu[side].idle_rate())
                self.idle[side] = statistics.median(rates)
            # Warm-up: the agents learn the operator's certificate; sizes are recorded.
            for _ in range(WARMUP_ROUNDS):
                await self.round("igris", 0)
            requester.unwatch(*watched)
            self.sizes = dict(requester.sizes)
            if set(self.sizes) != {"request", "reply"}:
                raise BenchError(f"did not see the bus's request and reply sizes: {self.sizes}")
            for i in range(WARMUP_ROUNDS):
                await self.round("floor", -1 - i)
            out: dict[str, list[dict[str, Any]]] = {"igris": [], "floor": []}
            for i in range(rounds):
                for side in ("floor", "igris") if i % 2 == 0 else ("igris", "floor"):
                    # A random pause, so rounds are not in step with heartbeats.
                    await asyncio.sleep(random.uniform(0, self.gap_s))
                    out[side].append(await self.round(side, i))
                self.check()
        return {**out, "sizes": self.sizes, "idle_cpu": dict(self.idle)}

    async def round(self, side: str, n: int) -> dict[str, Any]:
        """One fan-out of ``side`` and the CPU it cost: that side's helpers (less their idle
        rate), this process (the caller), the broker, and other processes on the machine."""
        waited = await self.quiet()
        cpu = self.cpu
        c0 = {name: meter.read() for name, meter in cpu.items()}
        m0 = self.machine.read()
        t0 = time.perf_counter()
        out = await (self._igris() if side == "igris" else self._floor(n))
        await asyncio.sleep(self.gap_s)  # PUBACKs and the last writes settle
        span = time.perf_counter() - t0
        used = {name: meter.read() - c0[name] for name, meter in cpu.items()}
        out.update(cpu_s=used[side] - self.idle[side] * span, raw_cpu_s=used[side],
                   caller_cpu_s=used["caller"], broker_cpu_s=used["broker"],
                   others_cpu_s=self.machine.read() - m0 - used["ours"], span_s=span,
                   quiet_wait_s=waited)
        return out

    async def quiet(self) -> float:
        """Wait (at most QUIET_MAX_WAIT_S) until no agent helper is busy; seconds waited.

        The K agents start together, so their heartbeats (every 10 s) come
        together too, and each is verified by every peer: at K=200 both
        helpers spend 3-4 s of every 10 at 100 % of a core on them, which a
        fleet of separate boards never does (there each verifies 199
        heartbeats per 10 s). Rounds of both sides start between bursts.
        """
        t0 = time.perf_counter()
        while True:
            c0 = [m.read() for m in self.helper_cpu]
            w0 = time.perf_counter()
            await asyncio.sleep(QUIET_WINDOW_S)
            span = time.perf_counter() - w0
            if all((m.read() - c) / span < QUIET_SHARE for m, c in zip(self.helper_cpu, c0,
                                                                       strict=True)):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > QUIET_MAX_WAIT_S:
                log(f"fan-out K={self.k}: agent helpers still busy after "
                    f"{QUIET_MAX_WAIT_S:g} s; measuring anyway")
                return time.perf_counter() - t0

    async def _igris(self) -> dict[str, Any]:
        k = self.k
        t0 = time.perf_counter()
        r = await self.bus.request("all", "ping", mode="all", timeout=self.timeout)
        took = time.perf_counter() - t0
        ok = sum(1 for reply in r.replies.values() if reply.ok)
        arrived = sorted(reply.ms for reply in r.replies.values())
        out = {"complete": r.complete and ok == k and len(r.expected) == k, "s": took,
               "first_s": arrived[0] / 1000 if arrived else None,
               "median_reply_s": statistics.median(arrived) / 1000 if arrived else None}
        if not out["complete"]:
            out.update(ok=ok, expected=len(r.expected), missing=r.missing)
        return out

    async def _floor(self, n: int) -> dict[str, Any]:
        took, first = await self.requester.fanout(self.k, n, self.sizes, self.timeout)
        return {"complete": True, "s": took, "first_s": first}


def fanout_summary(m: dict[str, Any]) -> dict[str, Any]:
    """Medians over the complete rounds (seconds, CPU seconds per round)."""
    out: dict[str, Any] = {}
    for side in ("igris", "floor"):
        done = [r for r in m[side] if r["complete"]]
        out[side] = {
            "n": len(done), "incomplete": len(m[side]) - len(done),
            "median_s": statistics.median(r["s"] for r in done) if done else None,
            "min_s": min(r["s"] for r in done) if done else None,
            "max_s": max(r["s"] for r in done) if done else None,
            "first_reply_s": _median(r["first_s"] for r in done),
            "cpu_per_round_s": _median(r["cpu_s"] for r in done),
            "caller_cpu_per_round_s": _median(r["caller_cpu_s"] for r in done),
            "broker_cpu_per_round_s": _median(r["broker_cpu_s"] for r in done),
            "others_cpu_share": _median(r["others_cpu_s"] / r["span_s"] for r in done),
            "quiet_wait_s": _median(r.get("quiet_wait_s") for r in done),
        }
    return out


def _median(values: Iterator[float | None] | Any) -> float | None:
    xs = [x for x in values if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- rate


def measure_rate(jan: Janitor, *, inflight: int, seconds: float, reps: int, keepalive: int,
                 broker_config: str, timeout: float, profile: Path | None) -> dict[str, Any]:
    """One agent alone in a helper process; an operator Bus here keeps ``inflight`` pings
    going. Alternates with the raw paho floor ``reps`` times."""
    spec = {"profile": str(profile)} if profile else None
    mesh = IgrisMesh(jan, nodes=1, procs=1, keepalive=keepalive, broker_config=broker_config,
                     helper_spec=spec)
    mesh.form(timeout)
    echo = FloorEcho(jan, mesh.tmp, mesh.broker.host, mesh.broker.port, ["e000"], 1)
    requester = FloorRequester(mesh.broker.host, mesh.broker.port)
    jan.callback(requester.close)
    run = RateRun(mesh, echo, requester, inflight=inflight, seconds=seconds, timeout=timeout)
    out = asyncio.run(run.run(mesh.enroll("bench-operator", role="operator"), reps))
    out.update(inflight=inflight, seconds=seconds, device=run.dev)
    return out


class RateRun:
    """Windows of requests kept in flight, Igris and raw alternating, with the CPU they cost."""

    WARMUP_S = 1.0

    def __init__(self, mesh: IgrisMesh, echo: FloorEcho, requester: FloorRequester, *,
                 inflight: int, seconds: float, timeout: float):
        self.mesh, self.echo, self.requester = mesh, echo, requester
        self.inflight, self.seconds, self.timeout = inflight, seconds, timeout
        self.dev = mesh.observers[0]
        agent, broker = mesh.helpers[0].proc.pid, mesh.broker.proc.pid
        self.meters: dict[str, CpuMeter | MachineMeter] = {
            "device_cpu": CpuMeter([agent]), "echo_cpu": CpuMeter(echo.pids),
            "client_cpu": CpuMeter([os.getpid()]), "broker_cpu": CpuMeter([broker]),
            "ours": CpuMeter([agent, *echo.pids, os.getpid(), broker]),
            "machine": MachineMeter()}

    async def run(self, operator: Path, reps: int) -> dict[str, Any]:
        dev, requester = self.dev, self.requester
        async with operator_bus(operator, self.mesh.broker.url) as (session, membership, bus):
            await wait_alive(membership, [dev], self.timeout, self.mesh.check_helpers)
            me = session.identity.device_id
            watched = (session.topics.cmd(dev), session.topics.filter("reply", me, "+"))
            requester.watch(*watched)
            await asyncio.sleep(0.2)
            for _ in range(20):
                r = await bus.request(dev, "ping", timeout=self.timeout)
                if not r.complete:
                    raise BenchError(f"ping {dev} not complete: {r.to_dict()}")
            requester.unwatch(*watched)
            sizes = dict(requester.sizes)
            out: dict[str, list[dict[str, Any]]] = {"igris": [], "floor": []}
            for i in range(reps):
                for side in ("floor", "igris") if i % 2 == 0 else ("igris", "floor"):
                    await asyncio.sleep(0.5)
                    if side == "floor":
                        r = await self.during(requester.rate(
                            "e000", self.inflight, self.WARMUP_S, self.seconds, sizes))
                    else:
                        r = await self.during(self._igris(bus))
                    out[side].append(r)
                    log(f"rate: {side} {r['per_s']:.0f} replies/s ({self.inflight} in flight; "
                        f"responder process "
                        f"{r['device_cpu' if side == 'igris' else 'echo_cpu'] * 100:.0f} % of a "
                        f"core, caller {r['client_cpu'] * 100:.0f} %, other processes "
                        f"{r['others_cpu'] * 100:.0f} %)")
                self.mesh.check_helpers()
                self.echo.check()
        return {**out, "sizes": sizes}

    async def _igris(self, bus: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        stop = start + self.WARMUP_S + self.seconds
        times: list[float] = []
        failed: list[Any] = []

        async def worker() -> None:
            while loop.time() < stop:
                r = await bus.request(self.dev, "ping", timeout=self.timeout)
                if r.complete:
                    times.append(loop.time())
                else:
                    failed.append(r.missing)

        await asyncio.gather(*(worker() for _ in range(self.inflight)))
        window = [t for t in times if start + self.WARMUP_S <= t < stop]
        return {"per_s": len(window) / self.seconds, "replies": len(times),
                "failed": len(failed), "failures": failed[:3]}

    async def during(self, coro: Any) -> dict[str, Any]:
        """Run ``coro`` (it warms up for WARMUP_S, then counts for ``seconds``); its result and
        the CPU share of each process (and of other processes) over the counted window."""
        task = asyncio.ensure_future(coro)
        await asyncio.sleep(self.WARMUP_S)
        c0, t0 = {k: m.read() for k, m in self.meters.items()}, time.perf_counter()
        await asyncio.sleep(self.seconds)
        c1, t1 = {k: m.read() for k, m in self.meters.items()}, time.perf_counter()
        out = {k: (c1[k] - c0[k]) / (t1 - t0) for k in self.meters}
        out["others_cpu"] = out.pop("machine") - out.pop("ours")
        return {**out, **await task}


# --------------------------------------------------------------------------- Serf


def serf_query(cluster: SerfCluster, origin: str, responders: list[str],
               timeout: float) -> dict[str, Any]:
    """One ``serf query ping`` from ``origin``; times of the last ack and last response from
    ``responders``, from the "dispatched" line and from just before ``Popen``."""
    node = cluster.nodes[origin]
    want = set(responders)
    acks: dict[str, float] = {}
    answers: dict[str, float] = {}
    dispatched: list[float] = []
    done = threading.Event()
    t_popen = time.time()
    proc = cluster.janitor.popen(
        [cluster.exe, "query", f"-rpc-addr={node.rpc_addr}", f"-timeout={timeout:g}s",
         "ping", ""], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, bufsize=0, start_new_session=True)

    def read(stream: IO[bytes]) -> None:
        for raw in stream:
            now = time.time()
            line = raw.decode(errors="replace")
            if line.startswith("Query ") and "dispatched" in line:
                dispatched.append(now)
            m = _SERF_LINE.match(line)
            if m and m.group(2) in want:
                (acks if m.group(1) == "Ack" else answers).setdefault(m.group(2), now)
                if len(answers) == len(want):
                    done.set()
        done.set()

    assert proc.stdout is not None
    reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
    reader.start()
    finished = done.wait(timeout + 5)
    proc.kill()
    proc.wait()
    reader.join(5)
    if not dispatched:
        raise BenchError(f"serf query via {origin} printed no 'dispatched' line")
    result: dict[str, Any] = {"responses": len(answers), "acks": len(acks), "n": len(want),
                              "complete": finished and len(answers) == len(want)}
    if answers:
        result["response_s"] = max(answers.values()) - dispatched[0]
        result["response_from_popen_s"] = max(answers.values()) - t_popen
    if acks:
        result["ack_s"] = max(acks.values()) - dispatched[0]
    return result


def measure_serf(n: int, rounds: int, *, gap_s: float, timeout: float,
                 attempts: int = 2) -> dict[str, Any]:
    """N Serf agents answering ``ping`` with a handler, plus one that asks.

    A cluster that does not form (some node never logs some member alive,
    even after ``_serf``'s repair) is started afresh, up to ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _serf_queries(n, rounds, gap_s=gap_s, timeout=timeout) | {"attempt": attempt}
        except BenchError as exc:
            if attempt == attempts or "serf nodes had not logged" not in str(exc):
                raise
            log(f"serf {n}: the cluster did not form ({str(exc).splitlines()[0]}); "
                "starting it afresh")
    raise AssertionError("unreachable")


def _serf_queries(n: int, rounds: int, *, gap_s: float, timeout: float) -> dict[str, Any]:
    with Janitor() as jan:
        cluster = SerfCluster(jan, agent_args=SERF_HANDLER)
        version = serf_version(cluster.exe)
        log(f"serf {version}: starting {n + 1} agents (profile lan; {n} answer, 1 asks)")
        formation = cluster.form(n + 1, timeout)
        log(f"serf: {n + 1} agents see each other {formation['formed_s']:.2f} s after the first "
            f"start" + (f" (repaired {len(formation['repairs'])} gaps)"
                        if formation["repairs"] else ""))
        names = sorted(cluster.nodes)
        origin, responders = names[0], names[1:]
        time.sleep(1.0)
        queries = []
        for i in range(WARMUP_ROUNDS + rounds):
            q = serf_query(cluster, origin, responders, timeout=min(timeout, 30.0))
            cluster.check_running(names)
            if i >= WARMUP_ROUNDS:
                queries.append(q)
                log(f"serf query {i + 1 - WARMUP_ROUNDS}/{rounds} to {n}: "
                    + (f"last response {q['response_s'] * 1000:.0f} ms, last ack "
                       f"{q['ack_s'] * 1000:.0f} ms" if q["complete"] else
                       f"INCOMPLETE: {q['responses']} responses, {q['acks']} acks of {n}"))
            time.sleep(gap_s + random.uniform(0, gap_s))
        return {"version": version, "n": n, "queries": queries,
                "formed_s": formation["formed_s"], "repairs": formation["repairs"]}


def serf_summary(m: dict[str, Any]) -> dict[str, Any]:
    done = [q for q in m["queries"] if q["complete"]]
    out: dict[str, Any] = {"n": len(done), "incomplete": len(m["queries"]) - len(done)}
    for key in ("response_s", "ack_s", "response_from_popen_s"):
        values = [q[key] for q in done if key in q]
        out[key] = statistics.median(values) if values else None
    out["max_response_s"] = max((q["response_s"] for q in done), default=None)
    return out


# --------------------------------------------------------------------------- profile


def profile_top(directory: Path, limit: int = 25) -> list[str]:
    """The top functions by own time over all helper profiles in ``directory``, as shares of
    the time the helpers were busy (their event loops' waits in epoll left out)."""
    files = sorted(directory.glob("helper-*.prof"))
    if not files:
        return []
    stats = pstats.Stats(*(str(f) for f in files))
    rows = []
    idle = 0.0
    for (path, line, fn), (_cc, calls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "epoll" in fn or "select.select" in fn:
            idle += tt
            continue
        rows.append((tt, ct, calls, f"{_short(path)}:{line}({fn})"))
    busy = stats.total_tt - idle  # type: ignore[attr-defined]
    rows.sort(reverse=True)
    out = [f"{'own s':>7s} {'own %':>6s} {'cum s':>7s} {'calls':>9s}  function "
           f"(busy {busy:.2f} s of {busy + idle:.2f} s over {len(files)} process(es))"]
    out += [f"{tt:7.2f} {tt / busy * 100:5.1f}% {ct:7.2f} {calls:9d}  {name}"
            for tt, ct, calls, name in rows[:limit]]
    return out


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3", "/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --------------------------------------------------------------------------- report


def build_report(fanout: dict[int, dict[str, Any]], rate: dict[str, Any] | None,
                 serf: dict[int, dict[str, Any]]) -> Report:
    report = Report("bus")
    for k, m in fanout.items():
        s = fanout_summary(m)
        ig, fl = s["igris"], s["floor"]
        if ig["median_s"] is None or fl["median_s"] is None:
            continue
        note = (f"median of {ig['n']} rounds (floor {fl['n']}); Igris min-max "
                f"{ig['min_s'] * 1000:.1f}-{ig['max_s'] * 1000:.1f} ms; floor: one raw paho "
                f"QoS 1 publish to {k} echo clients, all replies back")
        if ig["incomplete"]:
            note += f"; {ig['incomplete']} Igris rounds incomplete"
        sf = serf.get(k)
        if sf and "queries" in sf and serf_summary(sf)["response_s"]:
            note += f"; serf query to {k}: {serf_summary(sf)['response_s'] * 1000:.0f} ms"
        report.targets.append(Target(
            f"fan-out ping to all {k}, all replies", ig["median_s"] * 1000, "ms",
            FANOUT_TARGET_RATIO, "<=", "ratio", floor=fl["median_s"] * 1000,
            ratio=ig["median_s"] / fl["median_s"], note=note))
    if rate is not None:
        ig = statistics.median(r["per_s"] for r in rate["igris"])
        fl = statistics.median(r["per_s"] for r in rate["floor"])
        report.targets.append(Target(
            "signed commands/s, one device", ig, "/s", RATE_TARGET, ">=", "value", floor=fl,
            ratio=ig / fl,
            note=f"median of {len(rate['igris'])} windows of {rate['seconds']:g} s, "
                 f"{rate['inflight']} in flight; floor: raw paho QoS 1 request/response"))
    report.details = {
        "fanout": {str(k): {**m, "summary": fanout_summary(m)} for k, m in fanout.items()},
        "rate": rate,
        "serf": {str(n): ({**m, "summary": serf_summary(m)} if "queries" in m else m)
                 for n, m in serf.items()},
    }
    return report


def side_by_side(fanout: dict[int, dict[str, Any]], rate: dict[str, Any] | None,
                 serf: dict[int, dict[str, Any]], profile_lines: list[str]) -> Iterator[str]:
    yield (f"{'fan-out, all replies (median)':34s} {'Igris':>9s} {'raw paho':>9s} {'ratio':>6s}"
           f"   {'Serf query':>10s} {'Igris/Serf':>10s}")
    sizes = sorted(set(fanout) | set(serf))
    for k in sizes:
        m = fanout.get(k)
        s = fanout_summary(m) if m else None
        sf = serf.get(k)
        ss = serf_summary(sf) if sf and "queries" in sf else None
        ig = s["igris"]["median_s"] if s else None
        fl = s["floor"]["median_s"] if s else None
        sv = ss["response_s"] if ss else None
        yield (f"{'  to ' + str(k):34s} {_ms(ig):>9s} {_ms(fl):>9s} "
               f"{(f'{ig / fl:.2f}' if ig and fl else '-'):>6s}   {_ms(sv):>10s} "
               f"{(f'{ig / sv:.3f}' if ig and sv else '-'):>10s}")
    for k in sorted(fanout):
        m = fanout[k]
        s = fanout_summary(m)
        ig, fl = s["igris"], s["floor"]
        yield (f"  K={k}: {m['k']} agents in {m['procs']} processes (formed in "
               f"{m['formed_s']:.1f} s); request {m['sizes']['request']} B, reply "
               f"{m['sizes']['reply']} B; idle agent helpers use "
               f"{m['idle_cpu']['igris'] * 100:.0f} % of a core between heartbeat bursts; "
               f"median wait for a quiet moment before a round "
               f"{_ms(_median([ig['quiet_wait_s'], fl['quiet_wait_s']]))}")
        yield (f"    first reply after: Igris {_ms(ig['first_reply_s'])}, raw "
               f"{_ms(fl['first_reply_s'])}")
        if m["idle_cpu"]["igris"] > IDLE_NOISY:  # a per-round figure drowns in heartbeats
            responders = (f"responders not separable from the agents' idle load; raw "
                          f"{_ms(fl['cpu_per_round_s'])} ({_ms(_div(fl['cpu_per_round_s'], k))}"
                          " per client)")
        else:
            responders = (f"responders {_ms(ig['cpu_per_round_s'])} / "
                          f"{_ms(fl['cpu_per_round_s'])} (per responder "
                          f"{_ms(_div(ig['cpu_per_round_s'], k))} / "
                          f"{_ms(_div(fl['cpu_per_round_s'], k))}, idle rate subtracted)")
        yield (f"    CPU per round (medians), Igris / raw: {responders}; caller "
               f"{_ms(ig['caller_cpu_per_round_s'])} / {_ms(fl['caller_cpu_per_round_s'])}; "
               f"broker {_ms(ig['broker_cpu_per_round_s'])} / "
               f"{_ms(fl['broker_cpu_per_round_s'])}; other processes on the machine "
               f"{_pct(ig['others_cpu_share'])} / {_pct(fl['others_cpu_share'])} of a core")
    for n in sorted(serf):
        sf = serf[n]
        if "queries" not in sf:
            yield f"  Serf {n}: {sf.get('reason', 'not measured')}"
            continue
        ss = serf_summary(sf)
        yield (f"  Serf {n}: {sf['version']}; {n} agents answer with a handler, 1 asks; last "
               f"ack {_ms(ss['ack_s'])}, last response {_ms(ss['response_s'])} (max "
               f"{_ms(ss['max_response_s'])}; from before the CLI's Popen "
               f"{_ms(ss['response_from_popen_s'])}); {ss['n']} queries"
               + (f", {ss['incomplete']} incomplete" if ss["incomplete"] else "")
               + f"; cluster formed in {sf['formed_s']:.1f} s"
               + (f" after repairing {len(sf['repairs'])} gaps" if sf["repairs"] else "")
               + (f" (attempt {sf['attempt']})" if sf.get("attempt", 1) > 1 else ""))
    if rate is not None:
        yield ""
        yield f"signed commands/s to one device, {rate['inflight']} in flight:"
        for side, label in (("igris", "Igris bus.request(dev, 'ping')"),
                            ("floor", "raw paho QoS 1 request/response")):
            for r in rate[side]:
                cpu = r["device_cpu"] if side == "igris" else r["echo_cpu"]
                yield (f"  {label:34s} {r['per_s']:7.0f}/s  responder process "
                       f"{cpu * 100:3.0f} % of a core, caller {r['client_cpu'] * 100:3.0f} %, "
                       f"broker {r['broker_cpu'] * 100:3.0f} %, other processes "
                       f"{r['others_cpu'] * 100:3.0f} %; responder CPU per reply "
                       f"{_ms(cpu / r['per_s'] if r['per_s'] else None)}")
        yield (f"  request {rate['sizes'].get('request')} B, reply "
               f"{rate['sizes'].get('reply')} B")
    if profile_lines:
        yield ""
        yield "profile of the agent helpers (cProfile, top by own time):"
        yield from profile_lines


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms" if abs(x) >= 0.001 else \
        f"{x * 1000:.3f} ms"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _div(x: float | None, n: int) -> float | None:
    return None if x is None else x / n


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status is 0 whether targets pass or miss; non-zero only on errors.",
    )
    parser.add_argument("--sizes", type=int, nargs="*", default=[50, 200],
                        help="fan-out mesh sizes K (default 50 200; none: no fan-out)")
    parser.add_argument("--rounds", type=int, default=20,
                        help="fan-out rounds per size, each side (default 20)")
    parser.add_argument("--serf-sizes", type=int, nargs="*",
                        help="Serf cluster sizes (default: as --sizes)")
    parser.add_argument("--serf-rounds", type=int, default=10,
                        help="serf queries per size (default 10)")
    parser.add_argument("--skip-serf", action="store_true", help="no Serf comparison")
    parser.add_argument("--skip-rate", action="store_true", help="no commands/s figure")
    parser.add_argument("--inflight", type=int, default=32,
                        help="requests kept in flight for the rate (default 32)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="rate window, seconds (default 3)")
    parser.add_argument("--reps", type=int, default=3,
                        help="rate windows, each side, alternating (default 3)")
    parser.add_argument("--procs", type=int, default=2,
                        help="helper processes the K agents (and K echo clients) share "
                             "(default 2)")
    parser.add_argument("--keepalive", type=int, default=5,
                        help="MQTT keepalive of the agents, seconds (default 5)")
    parser.add_argument("--gap", type=float, default=0.1,
                        help="seconds between rounds (plus up to as much at random; default 0.1)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for any one step before giving up (default 60)")
    parser.add_argument("--broker-defaults", action="store_true",
                        help="leave Mosquitto's max_inflight_messages (20) and "
                             "max_queued_messages as the test broker has them")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="cProfile each agent helper into DIR and print the top functions")
    parser.add_argument("--bytecode", choices=BYTECODE_CHOICES, default="cached",
                        help=BYTECODE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.rounds < 1 or args.reps < 1 or min(args.sizes, default=1) < 1 or args.inflight < 1:
        parser.error("need --rounds, --reps, --inflight and every size >= 1")
    if args.serf_sizes is None:
        args.serf_sizes = args.sizes
    return args


def measure_igris(args: argparse.Namespace) -> tuple[dict[int, dict[str, Any]],
                                                     dict[str, Any] | None, list[str]]:
    """The rate, then the fan-out at each size, each phase with its own broker and agents."""
    broker_config = "" if args.broker_defaults else BROKER_CONFIG
    fanout: dict[int, dict[str, Any]] = {}
    rate = None
    profile_lines: list[str] = []
    with Janitor() as jan:
        how = use_bytecode_cache(jan, args.bytecode)
        log(f"bytecode: {how}; broker: "
            f"{'as configured' if args.broker_defaults else BROKER_CONFIG.strip()!r}")
        if not args.skip_rate:
            profile_dir = _profile_dir(args.profile, "rate")
            with Janitor() as phase:
                rate = measure_rate(phase, inflight=args.inflight, seconds=args.seconds,
                                    reps=args.reps, keepalive=args.keepalive,
                                    broker_config=broker_config, timeout=args.timeout,
                                    profile=profile_dir)
            if profile_dir:
                profile_lines += [f"-- rate ({profile_dir})", *profile_top(profile_dir)]
        for k in args.sizes:
            profile_dir = _profile_dir(args.profile, f"fanout{k}")
            with Janitor() as phase:
                fanout[k] = measure_fanout(
                    phase, k, rounds=args.rounds, procs=args.procs, keepalive=args.keepalive,
                    broker_config=broker_config, gap_s=args.gap, timeout=args.timeout,
                    profile=profile_dir)
            s = fanout_summary(fanout[k])
            log(f"fan-out K={k}: Igris median {_ms(s['igris']['median_s'])}, raw paho "
                f"{_ms(s['floor']['median_s'])}")
            if profile_dir:
                profile_lines += [f"-- fan-out K={k} ({profile_dir})", *profile_top(profile_dir)]
    return fanout, rate, profile_lines


def main() -> int:
    args = parse_args()
    raise_on_sigterm()
    # Ctrl-C as a plain KeyboardInterrupt wherever we are, as SIGTERM: asyncio.run would
    # otherwise only cancel its task, which a round in progress may outlive.
    signal.signal(signal.SIGINT, _interrupt)
    serf: dict[int, dict[str, Any]] = {}
    try:
        fanout, rate, profile_lines = measure_igris(args)
        for n in [] if args.skip_serf else args.serf_sizes:
            try:
                serf[n] = measure_serf(n, args.serf_rounds, gap_s=0.5, timeout=args.timeout)
            except BenchError as exc:
                # A size this machine cannot host is a result to report, not a crash.
                serf[n] = {"n": n, "reason": f"not measured: {str(exc).splitlines()[0]}"}
                log(f"serf {n}: {serf[n]['reason']}")
    except KeyboardInterrupt:
        print("interrupted; processes stopped and temp dirs removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = build_report(fanout, rate, serf)
    if profile_lines:
        report.details["profile"] = profile_lines
    report.print(args.json, lambda: side_by_side(fanout, rate, serf, profile_lines))
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _profile_dir(root: Path | None, name: str) -> Path | None:
    """``root/name``, made and emptied of old profiles (None without ``--profile``)."""
    if root is None:
        return None
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("helper-*.prof"):
        old.unlink()
    return path


if __name__ == "__main__":
    sys.exit(main())
