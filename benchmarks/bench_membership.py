"""Membership: join and failure detection in a 50-agent mesh, Igris and Serf side by side.

Figures (issue 3), each printed next to HashiCorp Serf (Debian ``serf``,
LAN profile, ``benchmarks/_serf.py``) measured the same way in the same run:

- **join**: into a mesh of ``--nodes`` agents (default 50) whose members all
  see each other alive, one more agent's process is started; the clock
  starts just before its ``Popen`` and stops when the last of the N has
  seen it alive (max over the N). Targets: <= 0.5 s, and no slower than
  Serf (ratio Igris / Serf <= 1).
- **failure after kill -9**: that agent is killed with SIGKILL; the clock
  stops when the last of the N has seen it dead. Targets: <= 1.5 x the
  configured MQTT keepalive (``--keepalive``, default 5 s), and faster than
  Serf (ratio <= 1). On one machine the kernel closes a killed process's
  TCP connection at once, so the broker sends the will without waiting for
  the keepalive; hence also:
- **silent failure (SIGSTOP)**: another joined agent is stopped with
  SIGSTOP: its connection stays open and says nothing, as a board that lost
  power or its link looks to the broker, so only the keepalive can find it.
  Same targets. Serf gets the same treatment (for Serf both look alike:
  it gossips over UDP and finds either by probing). For context, the broker
  alone: a bare paho client with a will and the same keepalive, stopped
  the same way, timed until its will arrives.
- **blocklist propagation**: an operator root runs ``python -m agent block
  add ghostI``; the clock starts just before its ``Popen`` and stops when
  the last of the N runtimes blocks ``ghostI``. Target: <= 1 s. The fleet's
  first block is timed apart (with no snapshot retained yet, the command
  waits a second for one). Measured only when the tree has the blocklist
  (``agent/security_mesh/blocklist.py``, ``agent/cli/block_cmd.py`` and a
  ``Runtime.blocklist``); otherwise the report says it was not measured.

The Igris side: a Mosquitto on loopback (no persistence, as Mosquitto ships),
a fleet CA, and N roots enrolled in one group (``bench``), so the agents
use group-scoped membership. The N agents run as ``agent.runtime.Runtime``
objects in ``--procs`` helper processes (default 2, one per core), each with
its own MQTT connection; each runtime's ``membership.add_listener`` callback
stamps ``time.time()`` on every peer state change and the helper writes it
to its stdout as a JSON line, so the times are those at which each agent's
event loop learned of the change, without polling. The joining agent is a
real ``python -m agent run --root R --broker URL`` process with a root
enrolled beforehand in the same group and ``keepalive_s`` set in its
``agent.toml``. Each run joins and kills one agent, then joins and stops
another, then blocks one device id; figures are the median (and max) over
runs::

    python benchmarks/bench_membership.py [--nodes 50] [--runs 3] [--keepalive 5]
                                          [--procs 2] [--skip-serf] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from _common import (
    BYTECODE_CHOICES,
    BYTECODE_HELP,
    REPO,
    AgentProc,
    BenchError,
    Janitor,
    Report,
    Target,
    child_env,
    make_ca,
    raise_on_sigterm,
    use_bytecode_cache,
)
from _serf import FAILURES, MemberLog, summarize
from _serf import measure as measure_serf

FLEET = "bench"
GROUP = "bench"
JOIN_TARGET_S = 0.5
FAIL_TARGET_KEEPALIVES = 1.5
BLOCK_TARGET_S = 1.0
_VERB = {"kill": "kill -9", "stop": "SIGSTOP (silent)"}
# The broker's own floor for a silent failure: a bare paho client with a will
# and the agents' keepalive; the bench stops it and times the will.
WILL_FLOOR_CODE = """\
import sys, paho.mqtt.client as mqtt
host, port, cid, keepalive = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
c.will_set("bench-floor/will/" + cid, b"gone", qos=1, retain=False)
c.connect(host, port, keepalive=keepalive)
c.loop_start()
print("up", flush=True)
sys.stdin.read()
"""
_BLOCKLIST_FILES = ("agent/security_mesh/blocklist.py", "agent/cli/block_cmd.py")

Log = Callable[[str], None]


# --------------------------------------------------------------------------- helper process
#
# Runs N/procs runtimes in one event loop. Reads one JSON line from stdin
# ({"broker", "keepalive", "roots", "expect"}), writes JSON lines to stdout:
# {"ready": formed_at, "blocklist": bool} once every local runtime sees every
# expected peer alive, then {"obs", "peer", "state", "t"} for each state
# change of a peer outside ``expect`` (the agents the bench starts). Further
# stdin lines are commands: {"watch_block": dev} answers {"watching": dev}
# and then reports, per runtime, when its blocklist first blocks ``dev``
# (state "blocked"). Stops its runtimes gracefully on stdin EOF or SIGTERM.


def helper_main() -> int:
    """Entry point of a helper process (``bench_membership.py --helper``)."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(sys.stdin.readline())
    asyncio.run(_helper(spec))
    return 0


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _helper(spec: dict[str, Any]) -> None:
    from agent.config import build_config
    from agent.mesh.peers import Peer
    from agent.runtime import Runtime

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def watch_stdin() -> None:  # EOF: the bench has gone, whatever the reason
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()

    config = build_config([("bench", {
        "mqtt": {"broker": spec["broker"], "keepalive_s": spec["keepalive"]},
        "health": {"pin_factory": "mock"},
    })])
    expect = set(spec["expect"])
    runtimes = [Runtime(Path(root), config) for root in spec["roots"]]
    missing: dict[str, set[str]] = {}
    formed = asyncio.Event()
    formed_at = [0.0]

    def listener(me: str) -> Callable[[Peer], None]:
        waiting = missing.setdefault(me, expect - {me})

        def on_peer(peer: Peer) -> None:
            t = time.time()
            if peer.device_id not in expect:
                _emit({"obs": me, "peer": peer.device_id, "state": peer.state, "t": t})
                return
            if peer.state == "alive":
                waiting.discard(peer.device_id)
                _note_formed(missing, formed, formed_at, t)
            else:
                waiting.add(peer.device_id)

        return on_peer

    for rt in runtimes:
        rt.membership.add_listener(listener(rt.identity.device_id))
    try:
        await asyncio.gather(*(rt.start() for rt in runtimes))
        _note_formed(missing, formed, formed_at, time.time())  # a mesh of one sees nobody
        waits = [asyncio.create_task(formed.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        # A cProfile when asked (``profile``: a directory), from the formed mesh to the end.
        with _profiled(spec.get("profile") if formed.is_set() else None):
            if formed.is_set():
                _emit({"ready": formed_at[0],
                       "blocklist": all(hasattr(rt, "blocklist") for rt in runtimes)})
            watchers: set[asyncio.Task[None]] = set()
            serve = asyncio.create_task(_serve_commands(runtimes, commands, watchers))
            await stop.wait()
            serve.cancel()
            for task in watchers:
                task.cancel()
    finally:
        await asyncio.gather(*(rt.stop() for rt in runtimes), return_exceptions=True)


def _note_formed(missing: dict[str, set[str]], formed: asyncio.Event, formed_at: list[float],
                 t: float) -> None:
    """Mark the mesh formed at ``t`` once no local runtime waits for any peer."""
    if not any(missing.values()) and not formed.is_set():
        formed_at[0] = t
        formed.set()


@contextlib.contextmanager
def _profiled(directory: str | None) -> Iterator[None]:
    """Profile this process while inside (cProfile) into ``directory/helper-PID.prof``."""
    if not directory:
        yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(str(Path(directory) / f"helper-{os.getpid()}.prof"))


async def _serve_commands(runtimes: list[Any], commands: asyncio.Queue[dict[str, Any]],
                          watchers: set[asyncio.Task[None]]) -> None:
    while True:
        command = await commands.get()
        dev = command["watch_block"]
        task = asyncio.create_task(_watch_block(runtimes, dev))
        watchers.add(task)
        task.add_done_callback(watchers.discard)
        _emit({"watching": dev})


async def _watch_block(runtimes: list[Any], dev: str, poll_s: float = 0.002,
                       give_up_s: float = 60.0) -> None:
    """Report when each runtime's blocklist first blocks ``dev``.

    Polled every 2 ms: the blocklist has no change listener, and a check is
    a dictionary lookup per runtime, so the poll costs little and bounds
    the error at 2 ms. It runs only while a block is on its way.
    """
    waiting = {rt.identity.device_id: rt for rt in runtimes}
    deadline = time.monotonic() + give_up_s
    while waiting and time.monotonic() < deadline:
        for me, rt in list(waiting.items()):
            if rt.blocklist.is_blocked(dev):
                _emit({"obs": me, "peer": dev, "state": "blocked", "t": time.time()})
                del waiting[me]
        await asyncio.sleep(poll_s)


# --------------------------------------------------------------------------- the Igris mesh


class Helper:
    """One helper process and the reader thread that turns its lines into :class:`MemberLog`."""

    def __init__(self, jan: Janitor, index: int, spec: dict[str, Any], log_path: Path,
                 events: MemberLog):
        self.index = index
        self.log_path = log_path
        self.events = events
        self.ready: float | None = None
        self.has_blocklist = False
        self.ready_event = threading.Event()
        self.watching: set[str] = set()
        self._watching_cond = threading.Condition()
        with log_path.open("ab") as err:
            self.proc = jan.popen(
                [sys.executable, str(Path(__file__).resolve()), "--helper"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                env=child_env(), cwd=REPO, start_new_session=True,  # Ctrl-C: we stop it
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()  # left open: its EOF tells the helper to stop
        self.thread = threading.Thread(target=self._read, daemon=True,
                                       name=f"igris-helper-{index}")
        self.thread.start()

    def _read(self) -> None:
        stream: IO[str] | None = self.proc.stdout
        assert stream is not None
        for line in stream:
            msg = json.loads(line)
            if "ready" in msg:
                self.ready = float(msg["ready"])
                self.has_blocklist = bool(msg["blocklist"])
                self.ready_event.set()
            elif "watching" in msg:
                with self._watching_cond:
                    self.watching.add(msg["watching"])
                    self._watching_cond.notify_all()
            else:
                self.events.note(msg["obs"], msg["state"], msg["peer"], float(msg["t"]))
        self.ready_event.set()
        self.events.wake()

    def watch_block(self, dev: str, timeout: float = 10.0) -> None:
        """Have the helper watch for ``dev`` being blocked; returns once it watches."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"watch_block": dev}) + "\n")
        self.proc.stdin.flush()
        with self._watching_cond:
            if not self._watching_cond.wait_for(lambda: dev in self.watching, timeout):
                self.check()
                raise BenchError(f"helper {self.index} did not start watching {dev}")

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"helper {self.index} exited with {self.proc.returncode}:\n"
                             f"{self.output()[-3000:]}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class WillWatcher:
    """A paho subscriber on ``bench-floor/will/#`` noting when each client's will arrives."""

    def __init__(self, host: str, port: int):
        import paho.mqtt.client as mqtt

        self.arrived: dict[str, float] = {}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-wills",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe("bench-floor/will/#", qos=1)
        if not subscribed.wait(10):
            raise BenchError("the will subscriber got no SUBACK within 10 s")

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.time()
        with self._cond:
            self.arrived.setdefault(msg.topic.rsplit("/", 1)[-1], now)
            self._cond.notify_all()

    def wait(self, cid: str, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: cid in self.arrived, timeout):
                raise BenchError(f"no will from the floor client {cid} within {timeout:g} s")
            return self.arrived[cid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class IgrisMesh:
    """N runtimes in helper processes on one broker, and the agents that join them."""

    def __init__(self, jan: Janitor, *, nodes: int, procs: int, keepalive: int,
                 broker_config: str = "", helper_spec: dict[str, Any] | None = None):
        """``broker_config``: extra mosquitto.conf lines; ``helper_spec``: extra keys for the
        helpers' spec (``profile``: a directory for a cProfile of each helper)."""
        from tests.support.broker import MosquittoBroker

        self.jan, self.nodes, self.keepalive = jan, nodes, keepalive
        self.helper_spec = dict(helper_spec or {})
        self.tmp = jan.tempdir("igmb")
        # No persistence: the default Mosquitto config has none, and saving on
        # every retained change would slow the broker this measures.
        self.broker = jan.enter_context(MosquittoBroker(self.tmp / "broker", persist=False,
                                                        extra_config=broker_config))
        self.ca = make_ca(self.tmp / "ca", FLEET)
        self.events = MemberLog()
        self.observers = [f"m{i:02d}" for i in range(nodes)]
        self.procs = max(1, min(procs, nodes))
        self.helpers: list[Helper] = []
        self.wills = WillWatcher(self.broker.host, self.broker.port)
        jan.callback(self.wills.close)

    def silent_floor(self, cid: str, *, settle_s: float, timeout: float) -> float:
        """The broker alone: a bare paho client (will set, the agents' keepalive) is stopped
        with SIGSTOP ``settle_s`` after it connected; seconds until its will arrives."""
        proc = self.jan.popen(
            [sys.executable, "-c", WILL_FLOOR_CODE, self.broker.host, str(self.broker.port),
             cid, str(self.keepalive)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
            cwd=REPO)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "up":
                raise BenchError(f"the floor client {cid} did not connect")
            time.sleep(settle_s)
            t_stop = time.time()
            os.kill(proc.pid, signal.SIGSTOP)
            return self.wills.wait(cid, timeout) - t_stop
        finally:
            proc.kill()
            proc.wait()

    def enroll(self, device_id: str, role: str = "device") -> Path:
        """A fresh short root enrolled in the bench group, with the bench's keepalive."""
        from agent.compat import wall_ms
        from agent.identity import enroll

        root = self.jan.tempdir("ig")
        enroll(root, self.ca, device_id, now_ms=wall_ms(), days=30, role=role,
               groups=(GROUP,) if role == "device" else ())
        (root / "agent.toml").write_text(f"[mqtt]\nkeepalive_s = {self.keepalive}\n")
        return root

    def form(self, timeout: float) -> float:
        """Start the N runtimes; returns seconds from the first helper start to all-see-all."""
        roots = [str(self.enroll(dev)) for dev in self.observers]
        t0 = time.time()
        for i in range(self.procs):
            spec = {"broker": self.broker.url, "keepalive": self.keepalive,
                    "roots": roots[i::self.procs], "expect": self.observers,
                    **self.helper_spec}
            self.helpers.append(Helper(self.jan, i, spec, self.tmp / f"helper{i}.log",
                                       self.events))
        deadline = time.monotonic() + timeout
        for helper in self.helpers:
            while not helper.ready_event.wait(0.2):
                helper.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"the {self.nodes} runtimes did not all see each other "
                                     f"within {timeout:g} s:\n{helper.output()[-3000:]}")
            if helper.ready is None:
                helper.check()
                raise BenchError(f"helper {helper.index} stopped before its mesh formed:\n"
                                 f"{helper.output()[-3000:]}")
        return max(h.ready or 0.0 for h in self.helpers) - t0

    def check_helpers(self) -> None:
        for helper in self.helpers:
            helper.check()

    def join_and_fail(self, device_id: str, how: str, *, settle_s: float,
                      timeout: float) -> dict[str, Any]:
        """One trial: start ``device_id`` and time it alive at all N, then fail it (``how``:
        ``kill`` or ``stop``) and time it dead at all N."""
        root = self.enroll(device_id)
        agent = AgentProc(root, self.broker.url, device_id, self.tmp / f"{device_id}.log")
        t0 = time.time()
        agent.start(self.jan)
        proc = agent.proc
        assert proc is not None

        def check_all() -> None:
            self.check_helpers()
            if proc.poll() is not None:
                raise BenchError(f"agent {device_id} exited with {proc.returncode}:\n"
                                 f"{agent.output()[-3000:]}")

        try:
            alive = self.events.wait_all(self.observers, "alive", device_id, timeout, check_all)
            time.sleep(settle_s)
            t_fail = time.time()
            os.kill(proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            dead = self.events.wait_all(self.observers, "dead", device_id, timeout,
                                        self.check_helpers)
        finally:
            if proc.poll() is None:
                proc.kill()  # also ends a stopped process, which SIGTERM would not
            proc.wait()
        join_s = [t - t0 for t in alive.values()]
        fail_s = [t - t_fail for t in dead.values()]
        return {"how": how, "join_s": max(join_s), "join_median_s": statistics.median(join_s),
                "fail_s": max(fail_s), "fail_median_s": statistics.median(fail_s)}

    @property
    def has_blocklist(self) -> bool:
        return all(h.has_blocklist for h in self.helpers)

    def block(self, operator_root: Path, target: str, timeout: float) -> dict[str, Any]:
        """One blocklist trial: ``igris block add TARGET`` as an operator, timed from just
        before its ``Popen`` until every one of the N runtimes blocks ``target``."""
        for helper in self.helpers:
            helper.watch_block(target)
        log_path = self.tmp / f"block-{target}.log"
        with log_path.open("ab") as log:
            t0 = time.time()
            proc = self.jan.popen(
                [sys.executable, "-m", "agent", "block", "add", target, "--reason", "bench",
                 "--root", str(operator_root), "--broker", self.broker.url, "--json"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(), cwd=REPO)

        def check() -> None:
            self.check_helpers()
            if proc.poll() not in (None, 0):
                raise BenchError(f"igris block add exited with {proc.returncode}:\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")

        seen = self.events.wait_all(self.observers, "blocked", target, timeout, check)
        if proc.wait(timeout) != 0:
            check()
        took = [t - t0 for t in seen.values()]
        return {"block_s": max(took), "block_median_s": statistics.median(took),
                "spread_s": max(took) - min(took)}


def blocklist_available() -> bool:
    """Whether the tree has the blocklist the propagation figure needs."""
    return all((REPO / f).is_file() for f in _BLOCKLIST_FILES)


def measure_igris(nodes: int, runs: int, *, procs: int, keepalive: int, bytecode: str,
                  settle_s: float, timeout: float, log: Log) -> dict[str, Any]:
    """Igris's figures in an N-runtime mesh: ``runs`` x (join + kill -9, join + SIGSTOP, the
    broker's own SIGSTOP floor), then the blocklist trials."""
    with Janitor() as jan:
        how_bytecode = use_bytecode_cache(jan, bytecode)
        mesh = IgrisMesh(jan, nodes=nodes, procs=procs, keepalive=keepalive)
        log(f"igris: broker {mesh.broker.url}; {nodes} runtimes in {mesh.procs} processes, "
            f"keepalive {keepalive} s; bytecode: {how_bytecode}")
        formed = mesh.form(timeout)
        log(f"igris: {nodes} runtimes see each other {formed:.2f} s after the first start")
        trials = []
        will_floor = []
        for i in range(runs):
            for how in FAILURES:
                r = mesh.join_and_fail(f"new{i}{how}", how, settle_s=settle_s, timeout=timeout)
                trials.append(r)
                log(f"igris run {i + 1}/{runs}: join seen by all {r['join_s']:.3f} s (median "
                    f"node {r['join_median_s']:.3f}); {_VERB[how]} seen dead by all "
                    f"{r['fail_s']:.2f} s (median node {r['fail_median_s']:.2f})")
            will_floor.append(mesh.silent_floor(f"floor{i}", settle_s=settle_s,
                                                timeout=timeout))
            log(f"broker floor run {i + 1}/{runs}: bare paho client stopped, will after "
                f"{will_floor[-1]:.2f} s")
        blocklist = measure_blocklist(mesh, runs, timeout, log)
        return {"nodes": nodes, "procs": mesh.procs, "keepalive_s": keepalive,
                "formed_s": formed, "trials": trials, "will_floor_s": will_floor,
                "bytecode": how_bytecode, "blocklist": blocklist}


def measure_blocklist(mesh: IgrisMesh, runs: int, timeout: float, log: Log) -> dict[str, Any]:
    """Blocklist propagation, when the tree has it: ``runs`` blocks of devices nobody runs.

    An operator root (same CA) runs ``igris block add ghostI``. The first
    block in a fleet finds no retained snapshot, and the command waits its
    full 1 s for one; that first block is timed on its own (``first``) and the
    figures come from the ones after it, as in a fleet that has a blocklist.
    """
    if not blocklist_available():
        return {"measured": False,
                "reason": "not measured: the tree has no " + " / ".join(_BLOCKLIST_FILES)}
    if not mesh.has_blocklist:
        return {"measured": False,
                "reason": "not measured: agent.runtime.Runtime has no blocklist attribute"}
    operator = mesh.enroll("bench-operator", role="operator")
    first = mesh.block(operator, "ghost-first", timeout)
    log(f"igris: first block (no snapshot yet) reached all {mesh.nodes} in "
        f"{first['block_s']:.3f} s")
    trials = []
    for i in range(runs):
        r = mesh.block(operator, f"ghost{i}", timeout)
        trials.append(r)
        log(f"igris block {i + 1}/{runs}: reached all {mesh.nodes} in {r['block_s']:.3f} s "
            f"after igris block add started (median node {r['block_median_s']:.3f}, first to "
            f"last {r['spread_s'] * 1000:.0f} ms)")
    return {"measured": True, "first": first, "trials": trials}


# --------------------------------------------------------------------------- report


def build_report(igris: dict[str, Any], serf: dict[str, Any] | None) -> Report:
    """Targets: each Igris figure against its issue target, and against Serf when measured."""
    ig = summarize(igris["trials"])
    sf = summarize(serf["trials"]) if serf else {}
    keep = igris["keepalive_s"]
    fail_target = FAIL_TARGET_KEEPALIVES * keep
    n = igris["nodes"]
    report = Report("membership")
    rows = [("join", f"join, seen alive by all {n}", JOIN_TARGET_S, "")]
    cause = {"kill": "the kernel closes the dead process's TCP connection and the broker "
                     "sends its will at once",
             "stop": "the connection stays open and silent: the broker's keepalive check "
                     "finds it"}
    rows += [(how, f"{_VERB[how]}, seen dead by all {n}", fail_target,
              f"keepalive {keep} s, target 1.5 x; {cause[how]}") for how in FAILURES]
    floor = igris["will_floor_s"]
    for key, name, target, why in rows:
        mine = ig[key]
        theirs = sf.get(key)
        note = f"median of {mine['n']}; max {mine['max']:.3f} s"
        note += f"; {why}" if why else ""
        if key == "stop" and floor:
            note += (f"; the broker alone (bare paho client, same keepalive) "
                     f"{statistics.median(floor):.2f} s")
        if theirs:
            note += f"; floor = Serf (median of {theirs['n']})"
        report.targets.append(Target(
            name, mine["median"], "s", target, "<=", "value",
            floor=theirs["median"] if theirs else None,
            ratio=mine["median"] / theirs["median"] if theirs else None, note=note))
        if theirs:
            report.targets.append(Target(
                f"{name} vs Serf", mine["median"], "s", 1.0, "<=", "ratio",
                floor=theirs["median"], ratio=mine["median"] / theirs["median"],
                note="ratio Igris / Serf, medians"))
    block = igris["blocklist"]
    if block["measured"]:
        times = [t["block_s"] for t in block["trials"]]
        report.targets.append(Target(
            f"blocklist entry, reaches all {n}", statistics.median(times), "s", BLOCK_TARGET_S,
            "<=", "value",
            note=f"median of {len(times)} from igris block add start; max {max(times):.3f} s; "
                 f"first block in the fleet {block['first']['block_s']:.3f} s"))
    report.details = {"igris": igris, "serf": serf, "igris_summary": ig, "serf_summary": sf}
    return report


def side_by_side(igris: dict[str, Any], serf: dict[str, Any] | None) -> Iterator[str]:
    """The figures as a reader compares them: Igris and Serf in adjacent columns."""
    ig = summarize(igris["trials"])
    sf = summarize(serf["trials"]) if serf else {}
    n = igris["nodes"]
    yield (f"{'':36s} {'Igris median':>12s} {'max':>7s}   {'Serf median':>11s} {'max':>7s}"
           f"   {'ratio':>5s}")
    for key, label in (("join", f"join, seen alive by all {n}"),
                       ("kill", f"kill -9, seen dead by all {n}"),
                       ("stop", f"SIGSTOP, seen dead by all {n}")):
        mine, theirs = ig[key], sf.get(key)
        serf_cols = (f"{theirs['median']:11.3f} {theirs['max']:7.3f}   "
                     f"{mine['median'] / theirs['median']:5.2f}") if theirs else \
            f"{'-':>11s} {'-':>7s}   {'-':>5s}"
        yield f"{label:36s} {mine['median']:12.3f} {mine['max']:7.3f}   {serf_cols}"
    floor = igris["will_floor_s"]
    if floor:
        yield (f"{'  broker floor: bare paho client':36s} {statistics.median(floor):12.3f} "
               f"{max(floor):7.3f}   (SIGSTOP to its will; Mosquitto's keepalive check)")
    yield (f"Igris: {n} runtimes in {igris['procs']} processes, MQTT keepalive "
           f"{igris['keepalive_s']} s (failure target {FAIL_TARGET_KEEPALIVES:g} x = "
           f"{FAIL_TARGET_KEEPALIVES * igris['keepalive_s']:g} s); mesh formed in "
           f"{igris['formed_s']:.2f} s")
    if serf:
        yield (f"Serf: {serf['version']}, {serf['nodes']} agents, profile {serf['profile']}; "
               f"formed in {serf['formed_s']:.2f} s; RSS {serf['rss_mb_median']:.1f} MB/agent")
        if serf["repairs"]:
            yield (f"  forming it, Serf lost {len(serf['repairs'])} join(s) to a node; repaired "
                   f"with serf join: {', '.join(serf['repairs'])}")
        for trial in serf["trials"]:
            if "incomplete" in trial:
                yield f"  Serf join incomplete (left out of the figures): {trial['incomplete']}"
    else:
        yield "Serf: skipped (--skip-serf)"
    block = igris["blocklist"]
    if block["measured"]:
        times = [t["block_s"] for t in block["trials"]]
        spread = statistics.median(t["spread_s"] for t in block["trials"])
        yield (f"blocklist entry to all {n}, from igris block add start: median "
               f"{statistics.median(times):.3f} s, max {max(times):.3f} s (first to last agent "
               f"{spread * 1000:.0f} ms); the fleet's first block, no snapshot retained yet: "
               f"{block['first']['block_s']:.3f} s (Serf has no blocklist)")
    else:
        yield f"blocklist entry to all {n}: {block['reason']}"


def main() -> int:
    if sys.argv[1:] == ["--helper"]:
        return helper_main()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status is 0 whether targets pass or miss; non-zero only on errors.",
    )
    parser.add_argument("--nodes", type=int, default=50, help="agents in the mesh (default 50)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs; each joins and kills one agent and joins and stops another "
                             "(Igris and Serf), and blocks one device id (default 3)")
    parser.add_argument("--keepalive", type=int, default=5,
                        help="MQTT keepalive of every Igris agent, seconds (default 5)")
    parser.add_argument("--procs", type=int, default=2,
                        help="helper processes the N Igris runtimes share (default 2)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between a join and the failure (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for any one figure before giving up (default 60)")
    parser.add_argument("--skip-serf", action="store_true", help="measure Igris only")
    parser.add_argument("--bytecode", choices=BYTECODE_CHOICES, default="cached",
                        help=BYTECODE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.runs < 1 or args.nodes < 2 or args.keepalive < 1:
        parser.error("need --runs >= 1, --nodes >= 2, --keepalive >= 1")
    raise_on_sigterm()

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        serf = None
        if not args.skip_serf:
            serf = measure_serf(args.nodes, args.runs, settle_s=args.settle,
                                 timeout=args.timeout, log=log)
        igris = measure_igris(args.nodes, args.runs, procs=args.procs, keepalive=args.keepalive,
                              bytecode=args.bytecode, settle_s=args.settle,
                              timeout=args.timeout, log=log)
    except KeyboardInterrupt:
        print("interrupted; processes stopped and temp dirs removed", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = build_report(igris, serf)
    report.print(args.json, lambda: side_by_side(igris, serf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
