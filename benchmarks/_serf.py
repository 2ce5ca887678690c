"""HashiCorp Serf on loopback, measured the way ``bench_membership.py`` measures Igris.

Not a benchmark by itself: ``bench_membership.py`` imports it to put Serf's
figures next to Igris's, taken in the same run on the same machine. Run
alone, it prints Serf's figures (handy when tuning the Igris side)::

    python benchmarks/_serf.py [--nodes 50] [--runs 3] [--profile lan]

What it does: N ``serf agent`` processes on 127.0.0.1, each with its own
gossip and RPC port, the first started alone and the others joining it; once
every node sees every other alive, a further agent is started (the clock
starts just before its ``Popen``) and timed until every one of the N sees
it alive; then that agent is killed with SIGKILL and timed until every one
of the N reports it failed.

How "sees" is timed: each agent's log (stdout, ``-log-level=info``) is read
line by line by a thread per agent, and a line is stamped with
``time.time()`` as it arrives. Serf logs ``serf: EventMemberJoin: NAME ADDR``
and ``serf: EventMemberFailed: NAME ADDR`` at the moment its member table
changes (the same change ``serf members`` shows as ``alive`` / ``failed``),
so this costs nothing while measuring and is as exact as the pipe. Two
other ways were rejected:

- event handler scripts (``-event-handler``) are run only after the agent's
  member-event coalescing (the agent sets a 1 s quiescent period, up to
  3 s), so a handler that writes ``date +%s.%N`` would add about a second
  that has nothing to do with how fast Serf learns of a member;
- polling ``serf members`` on each of 50 nodes forks 50 processes per round
  on the same two cores the agents run on, which slows what it measures and
  rounds every figure up to the polling interval.

Each run's result is checked once against ``serf members -format=json`` on
the first node (the new member must be listed ``alive``, later ``failed``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _common import BenchError, Janitor, raise_on_sigterm

# "2024/05/01 10:00:00 [INFO] serf: EventMemberJoin: n07 127.0.0.1" (Serf 0.8/0.9).
_EVENT = re.compile(rb"serf: EventMember(Join|Failed|Leave|Reap|Update): (\S+)")
_STATE_OF_EVENT = {b"Join": "alive", b"Failed": "failed", b"Leave": "left",
                   b"Reap": "reaped", b"Update": "updated"}
_INSTALL_HINT = "install it with: apt-get install serf (Debian package 0.9.4)"


def find_serf() -> str:
    """Path of the ``serf`` binary, or a :class:`BenchError` saying how to get it."""
    path = shutil.which("serf")
    if path is None:
        raise BenchError(f"serf not found on PATH; {_INSTALL_HINT}")
    return path


def serf_version(exe: str) -> str:
    """``serf version``'s first line plus the Debian package version when there is one.

    Debian's 0.9.4 build reports itself as ``0.8.2-dev`` (its version string
    was never bumped), so the package version is what identifies it.
    """
    out = subprocess.run([exe, "version"], capture_output=True, text=True, check=False)
    first = (out.stdout.splitlines() or ["?"])[0]
    dpkg = shutil.which("dpkg-query")
    if dpkg:
        pkg = subprocess.run([dpkg, "-W", "-f=${Version}", "serf"], capture_output=True,
                             text=True, check=False)
        if pkg.returncode == 0 and pkg.stdout:
            return f"{first} (Debian package {pkg.stdout})"
    return first


class PortPool:
    """Loopback ports free for both TCP and UDP (Serf gossips over both), never handed out twice."""

    def __init__(self) -> None:
        self._given: set[int] = set()

    def take(self) -> int:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", 0))
                port = tcp.getsockname()[1]
                if port in self._given:
                    continue
                try:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                        udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self._given.add(port)
            return port
        raise BenchError("found no free loopback port")


class MemberLog:
    """When each node first logged each member state of each other node.

    ``first[(observer, state, subject)]`` is the ``time.time()`` at which the
    line arrived; later repeats (a member that flaps) do not move it.
    """

    def __init__(self) -> None:
        self.first: dict[tuple[str, str, str], float] = {}
        self._cond = threading.Condition()

    def note(self, observer: str, state: str, subject: str, when: float) -> None:
        with self._cond:
            self.first.setdefault((observer, state, subject), when)
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake waiters (a process died) so they re-check their own exit conditions."""
        with self._cond:
            self._cond.notify_all()

    def wait_all(self, observers: Iterable[str], state: str, subject: str, timeout: float,
                 check: Callable[[], None]) -> dict[str, float]:
        """Times at which every observer logged ``subject`` as ``state``.

        ``check`` runs on every wake-up and raises to abandon the wait (an
        agent exited); :class:`BenchError` after ``timeout`` seconds names the
        observers still missing.
        """
        names = list(observers)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [o for o in names if (o, state, subject) not in self.first]
                if not missing:
                    return {o: self.first[(o, state, subject)] for o in names}
                check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"after {timeout:g} s, {len(missing)} of {len(names)} serf nodes had "
                        f"not logged {subject} as {state}: {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
                self._cond.wait(min(left, 0.5))


@dataclass
class SerfNode:
    """One ``serf agent`` process and the tail of its log (for error messages)."""

    name: str
    bind_port: int
    rpc_port: int
    proc: subprocess.Popen[bytes]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=400))
    reader: threading.Thread | None = None

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def output(self) -> str:
        return "\n".join(self.tail)


class SerfCluster:
    """Serf agents on loopback, all owned by a :class:`Janitor` (stopped on exit and Ctrl-C)."""

    def __init__(self, janitor: Janitor, *, profile: str = "lan", exe: str | None = None,
                 agent_args: tuple[str, ...] = ()):
        self.janitor = janitor
        self.profile = profile
        self.agent_args = agent_args  # more ``serf agent`` flags, e.g. an -event-handler
        self.exe = exe or find_serf()
        self.ports = PortPool()
        self.log = MemberLog()
        self.nodes: dict[str, SerfNode] = {}

    # ------------------------------------------------------------------ processes

    def start_node(self, name: str, join: SerfNode | None) -> tuple[SerfNode, float]:
        """Start ``serf agent`` for ``name`` (joining ``join``); returns it and its start time.

        The start time is ``time.time()`` just before ``Popen``.
        """
        bind, rpc = self.ports.take(), self.ports.take()
        args = [self.exe, "agent", f"-node={name}", f"-bind=127.0.0.1:{bind}",
                f"-rpc-addr=127.0.0.1:{rpc}", f"-profile={self.profile}", "-log-level=info",
                *self.agent_args]
        if join is not None:
            args.append(f"-join=127.0.0.1:{join.bind_port}")
        t0 = time.time()
        proc = self.janitor.popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, bufsize=0,
                                  start_new_session=True)  # Ctrl-C reaches us, not them
        node = SerfNode(name, bind, rpc, proc)
        node.reader = threading.Thread(target=self._read, args=(node,), daemon=True,
                                       name=f"serf-log-{name}")
        node.reader.start()
        self.nodes[name] = node
        return node, t0

    def _read(self, node: SerfNode) -> None:
        stream: IO[bytes] | None = node.proc.stdout
        assert stream is not None
        for line in stream:
            now = time.time()
            node.tail.append(line.decode(errors="replace").rstrip())
            m = _EVENT.search(line)
            if m:
                self.log.note(node.name, _STATE_OF_EVENT[m.group(1)], m.group(2).decode(), now)
        self.log.wake()

    def check_running(self, names: Iterable[str]) -> None:
        """Raise :class:`BenchError` with its log if any of these agents has exited."""
        for name in names:
            node = self.nodes[name]
            if node.proc.poll() is not None:
                raise BenchError(f"serf agent {name} exited with {node.proc.returncode}:\n"
                                 f"{node.output()[-3000:]}")

    def fail(self, name: str, how: str) -> float:
        """Make ``name`` vanish; returns ``time.time()`` just before the signal.

        ``how`` is ``"kill"`` (SIGKILL: the process and its sockets are gone) or
        ``"stop"`` (SIGSTOP: the process keeps its sockets but says nothing, as
        a board that lost power or its link looks to the others); a stopped
        agent is killed later by :meth:`reap`.
        """
        node = self.nodes[name]
        t = time.time()
        node.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        if how == "kill":
            node.proc.wait()
        return t

    def reap(self, name: str) -> None:
        """SIGKILL ``name`` (also when stopped, which SIGTERM would not end) and reap it."""
        node = self.nodes[name]
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()

    def members(self, via: str) -> dict[str, str]:
        """``serf members`` as seen by node ``via``: name -> status."""
        out = subprocess.run([self.exe, "members", f"-rpc-addr={self.nodes[via].rpc_addr}",
                              "-format=json"], capture_output=True, text=True, timeout=10,
                             check=False)
        if out.returncode != 0:
            raise BenchError(f"serf members via {via} failed: {out.stderr.strip()}")
        return {m["name"]: m["status"] for m in json.loads(out.stdout)["members"]}

    # ------------------------------------------------------------------ phases

    def form(self, n: int, timeout: float = 60.0, *, spacing_s: float = 0.0,
             repair_after_s: float = 10.0) -> dict[str, Any]:
        """Start ``n`` agents named ``s00``.. and wait until every one logs every other alive.

        The first agent must listen before the others start (``-join`` gives up
        at once when nobody answers); the rest follow ``spacing_s`` apart.
        Started together on a busy 2-core machine, Serf sometimes lost the
        gossip of one join to one node (8 formations of 40 here, back to back
        or 20 ms apart alike); left alone, that node still listed the member
        as absent a minute later, waiting for anti-entropy (a push/pull every
        30 s, scaled up past 32 nodes). So a gap
        still open after ``repair_after_s`` is repaired the way an operator
        would, ``serf join`` from the node that lacks the member to that
        member, and counted in ``repairs``. The join and failure figures are
        taken afterwards, on a cluster where all see all.

        Returns ``formed_s`` (first start to all-see-all, context only) and
        ``repairs``.
        """
        if n < 2:
            raise BenchError("a Serf cluster needs at least 2 nodes")
        names = [f"s{i:02d}" for i in range(n)]
        first, t0 = self.start_node(names[0], None)
        self.log.wait_all([first.name], "alive", first.name, timeout,
                          lambda: self.check_running([first.name]))
        self._wait_rpc(first, timeout)
        for name in names[1:]:
            self.start_node(name, first)
            time.sleep(spacing_s)
        repairs = []
        last = 0.0
        for subject in names:
            try:
                seen = self.log.wait_all(names, "alive", subject,
                                         max(0.0, t0 + repair_after_s - time.time()),
                                         lambda: self.check_running(names))
            except BenchError:
                for observer in self.lacking(subject):
                    self.repair(observer, subject)
                    repairs.append(f"{observer} lacked {subject}")
                try:
                    seen = self.log.wait_all(names, "alive", subject, timeout,
                                             lambda: self.check_running(names))
                except BenchError as exc:
                    raise BenchError(f"{exc}\n{self.explain(subject)}") from None
            last = max(last, *seen.values())
        listed = self.members(names[0])
        if sorted(k for k, v in listed.items() if v == "alive") != sorted(names):
            raise BenchError(f"serf members on {names[0]} disagrees with the logs: {listed}")
        return {"formed_s": last - t0, "repairs": repairs}

    def lacking(self, subject: str, state: str = "alive") -> list[str]:
        """The nodes that have not logged ``subject`` as ``state``."""
        return [o for o in self.nodes if o != subject
                and (o, state, subject) not in self.log.first]

    def repair(self, observer: str, subject: str) -> None:
        """``serf join`` from ``observer`` to ``subject``: a push/pull that fills the gap."""
        out = subprocess.run(
            [self.exe, "join", f"-rpc-addr={self.nodes[observer].rpc_addr}",
             f"127.0.0.1:{self.nodes[subject].bind_port}"],
            capture_output=True, text=True, timeout=10, check=False)
        if out.returncode != 0:
            raise BenchError(f"serf join from {observer} to {subject} failed: "
                             f"{(out.stderr or out.stdout).strip()}")

    def explain(self, subject: str, state: str = "alive", most: int = 2) -> str:
        """What the nodes that have not logged ``subject`` as ``state`` say (for errors)."""
        lines = []
        for name in self.lacking(subject, state)[:most]:
            try:
                view = self.members(name).get(subject, "absent")
            except (BenchError, subprocess.TimeoutExpired, ValueError) as exc:
                view = f"unknown ({exc})"
            lines.append(f"--- {name}: serf members says {subject} is {view}; its log ends:\n"
                         + "\n".join(list(self.nodes[name].tail)[-25:]))
        return "\n".join(lines)

    def _wait_rpc(self, node: SerfNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_running([node.name])
            try:
                with socket.create_connection(("127.0.0.1", node.rpc_port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"serf agent {node.name} RPC not up within {timeout:g} s:\n"
                                     f"{node.output()}") from None
                time.sleep(0.01)

    def join_and_fail(self, name: str, observers: list[str], how: str, *,
                      settle_s: float = 1.0, timeout: float = 60.0) -> dict[str, Any]:
        """One run: start ``name`` into the cluster and time it alive everywhere, then make it
        fail (``how``, see :meth:`fail`) and time it failed everywhere.

        ``settle_s`` passes between the two (the new agent's own gossip has
        quieted) so the failure measure starts from a steady cluster.
        """
        first = self.nodes[observers[0]]
        _, t0 = self.start_node(name, first)
        watched = [*observers, name]
        try:
            alive = self.log.wait_all(observers, "alive", name, timeout,
                                      lambda: self.check_running(watched))
        except BenchError:
            lacking = [o for o in self.lacking(name) if o in observers]
            if not lacking or any(self.nodes[o].proc.poll() is not None for o in watched):
                raise
            # Serf lost the gossip of this join to some node: a result, not a
            # breakdown. Reported as such; the failure half is skipped.
            self.reap(name)
            return {"how": how, "incomplete": f"after {timeout:g} s, {len(lacking)} of "
                    f"{len(observers)} nodes had not seen {name} alive: {', '.join(lacking)}"}
        status = self.members(observers[0]).get(name)
        if status != "alive":
            raise BenchError(f"{name}: logged alive but serf members on {observers[0]} says "
                             f"{status!r}")
        time.sleep(settle_s)
        t_fail = self.fail(name, how)
        try:
            failed = self.log.wait_all(observers, "failed", name, timeout,
                                       lambda: self.check_running(observers))
        finally:
            self.reap(name)
        status = self.members(observers[0]).get(name)
        if status != "failed":
            raise BenchError(f"{name}: logged failed but serf members on {observers[0]} says "
                             f"{status!r}")
        join_s = [t - t0 for t in alive.values()]
        fail_s = [t - t_fail for t in failed.values()]
        return {"how": how, "join_s": max(join_s), "join_median_s": statistics.median(join_s),
                "fail_s": max(fail_s), "fail_median_s": statistics.median(fail_s)}


FAILURES = ("kill", "stop")


def measure(nodes: int, runs: int, *, profile: str = "lan", failures: tuple[str, ...] = FAILURES,
            settle_s: float = 1.0, timeout: float = 60.0,
            log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Serf's join and failure-detection figures in one ``nodes``-node cluster.

    Each of ``runs`` runs starts one extra agent per entry of ``failures``
    (fresh name and ports each time), times its join, then fails it that
    way. Returns every trial (max and median over the observers), how long
    the cluster took to form, Serf's version and the agents' median RSS.
    """
    with Janitor() as jan:
        cluster = SerfCluster(jan, profile=profile)
        version = serf_version(cluster.exe)
        log(f"serf {version}; starting {nodes} agents (profile {profile})")
        formation = cluster.form(nodes, timeout)
        formed = formation["formed_s"]
        log(f"serf: {nodes} agents see each other {formed:.2f} s after the first start"
            + (f" (after repairing {len(formation['repairs'])} gaps: "
               f"{', '.join(formation['repairs'])})" if formation["repairs"] else ""))
        observers = [f"s{i:02d}" for i in range(nodes)]
        trials = []
        for i in range(runs):
            for how in failures:
                r = cluster.join_and_fail(f"new{i}{how}", observers, how, settle_s=settle_s,
                                          timeout=timeout)
                trials.append(r)
                if "incomplete" in r:
                    log(f"serf run {i + 1}/{runs}: join incomplete: {r['incomplete']}")
                    continue
                log(f"serf run {i + 1}/{runs}: join seen by all {r['join_s']:.3f} s "
                    f"(median node {r['join_median_s']:.3f}); {_VERB[how]} seen failed by all "
                    f"{r['fail_s']:.2f} s (median node {r['fail_median_s']:.2f})")
        rss_kb = []
        for name in observers:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                status = Path(f"/proc/{cluster.nodes[name].proc.pid}/status").read_text()
                rss_kb.append(int(next(x for x in status.splitlines()
                                       if x.startswith("VmRSS")).split()[1]))
        return {"version": version, "profile": profile, "nodes": nodes, "trials": trials,
                "formed_s": formed, "repairs": formation["repairs"],
                "rss_mb_median": statistics.median(rss_kb) / 1024 if rss_kb else None}


_VERB = {"kill": "kill -9", "stop": "SIGSTOP"}


def summarize(trials: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and max over trials of the join figure and of each failure kind's figure.

    Trials whose join never completed (``incomplete``) are left out; their
    count is in ``incomplete`` when there are any.
    """
    out: dict[str, dict[str, float]] = {}
    incomplete = sum("incomplete" in t for t in trials)
    if incomplete:
        out["incomplete"] = {"n": incomplete}
    trials = [t for t in trials if "incomplete" not in t]
    series = {"join": [t["join_s"] for t in trials]} if trials else {}
    for how in FAILURES:
        fails = [t["fail_s"] for t in trials if t["how"] == how]
        if fails:
            series[how] = fails
    for key, values in series.items():
        out[key] = {"median": statistics.median(values), "max": max(values), "n": len(values)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50, help="cluster size (default 50)")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs; each joins and kills one agent, and joins and stops "
                             "another (default 3)")
    parser.add_argument("--profile", choices=("lan", "wan", "local"), default="lan",
                        help="Serf timing profile (default lan)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.runs < 1 or args.nodes < 2:
        parser.error("need --runs >= 1 and --nodes >= 2")
    raise_on_sigterm()

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    try:
        m = measure(args.nodes, args.runs, profile=args.profile, log=log)
    except KeyboardInterrupt:
        print("interrupted; serf agents stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(m))
        return 0
    print(f"serf {m['version']}, {m['nodes']} nodes, profile {m['profile']}; "
          f"formed in {m['formed_s']:.2f} s; RSS {m['rss_mb_median']:.1f} MB per agent")
    for key, label in (("join", "join seen alive by all"), ("kill", "kill -9 seen failed by all"),
                       ("stop", "SIGSTOP seen failed by all")):
        s = summarize(m["trials"]).get(key)
        if s:
            print(f"{label:28s} median {s['median']:.3f} s, max {s['max']:.3f} s (n={s['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
