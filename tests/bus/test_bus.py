"""Command bus on the in-process transport: fan-out, modes, missing devices, once-only,
refusals, ledger. Real identities, signed channels, membership, SQLite and ledger."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.bus import ROLES_MUTATE, Arg, Bus, CommandRegistry, CommandServer, CommandSpec
from agent.bus.server import AUDIT_MAX_RUNS, AUDIT_WINDOW_S, recorded_runs
from agent.db import Database
from agent.identity import Identity, SignedChannel, TrustStore, enroll
from agent.mesh import Membership, Presence, resolve_scope
from agent.security_mesh import Ledger
from agent.transport import InprocTransport
from agent.wire import HybridClock, Topics, parse_envelope
from tests.support.inproc_fleet import node_factory, settle

NOW = 1_800_000_000_000
TOPICS = Topics("lab")


def make_registry(calls: list[str]) -> CommandRegistry:
    registry = CommandRegistry()

    async def ping(call):
        calls.append(call.id)
        return {"pong": True}

    async def bump(call):
        calls.append(call.id)
        return {"by": call.args["by"]}

    async def slow(call):
        await asyncio.sleep(5)

    registry.add(CommandSpec("ping", ping, "answer"))
    registry.add(CommandSpec("bump", bump, "change something", args={"by": Arg(int)},
                             mutates=True, roles=ROLES_MUTATE))
    registry.add(CommandSpec("slow", slow, "too slow", timeout_s=0.2))

    # Plain functions: answered inline, from the message callback.
    def peek(call):
        calls.append(call.id)
        if call.args["crash"]:
            raise ValueError("sensor unplugged")
        return {"seen": True}

    def tick(call):
        calls.append(call.id)
        return {"ticked": call.args["n"]}

    registry.add(CommandSpec("peek", peek, "a quick read", args={"crash": Arg(bool)}))
    registry.add(CommandSpec("tick", tick, "a quick change", args={"n": Arg(int)},
                             mutates=True, roles=ROLES_MUTATE))
    return registry


class Node:
    def __init__(self, tmp, hub, ca, dev, clock, *, groups=(), role="device", serve=True):
        root = tmp / dev
        if not (root / "cert.json").exists():
            enroll(root, ca, dev, now_ms=NOW, days=10, groups=tuple(groups), role=role)
        self.identity = Identity.load(root)
        self.db = Database.open(root / "igris.db")
        self.transport = InprocTransport(hub, client_id=dev)
        hlc = HybridClock(clock)
        self.channel = SignedChannel(
            self.transport, self.identity,
            TrustStore(self.identity.ca_public, fleet="lab", now_ms=clock), hlc=hlc, now_ms=clock)
        self.ledger = Ledger(self.db, self.identity, hlc)
        self.presence = Presence(self.channel, TOPICS, session=1, describe=dict,
                                 health=dict, heartbeat_s=3600)
        self.membership = Membership(
            self.channel, TOPICS, self.db,
            scope=resolve_scope("auto", self.identity.certificate),
            suspect_after_s=30, dead_after_s=90, now_ms=clock, tick_s=3600)
        self.calls: list[str] = []
        self.policy: dict[str, dict] = {}
        self.server = CommandServer(
            self.channel, TOPICS, self.db, make_registry(self.calls), record=self.ledger.append,
            policy_section=lambda name: self.policy.get(name, {}), now_ms=clock) if serve else None
        self.bus = Bus(self.channel, TOPICS, membership=self.membership, serves_commands=serve)
        self.closed = False

    async def start(self) -> Node:
        self.transport.set_will(self.presence.will())
        await self.transport.start()
        await self.membership.start()
        if self.server:
            await self.server.start()
        await self.bus.start()
        await self.presence.start()
        return self

    async def stop(self, *, crash: bool = False) -> None:
        self.closed = True
        if self.server:
            await self.server.stop()
        await self.membership.stop()
        if crash:
            await self.transport.abort()
        else:
            await self.presence.stop()
            await self.transport.stop()
        self.db.close()


@pytest.fixture
def fleet(tmp_path, async_cleanup):
    make, clock = node_factory(Node, tmp_path, async_cleanup)
    return make, clock


async def four_devices_and_an_operator(make):
    devs = [await make(f"d{i}", groups=["east" if i < 2 else "west"]) for i in range(4)]
    op = await make("op", role="operator", serve=False)
    await settle()
    return devs, op


async def test_fan_out_to_all_and_to_a_group_returns_when_complete(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    result = await op.bus.request("all", "ping", timeout=5)
    assert result.complete and result.expected == ["d0", "d1", "d2", "d3"]
    assert sorted(result.replies) == ["d0", "d1", "d2", "d3"] and not result.missing
    assert all(r.ok and r.result == {"pong": True} for r in result.replies.values())
    assert result.elapsed_ms < 1000  # not the timeout
    east = await op.bus.request("group:east", "ping", timeout=5)
    assert east.complete and sorted(east.replies) == ["d0", "d1"]
    assert [len(d.calls) for d in devs] == [2, 2, 1, 1]


async def test_quorum_first_and_any(fleet):
    make, _ = fleet
    _, op = await four_devices_and_an_operator(make)
    quorum = await op.bus.request("all", "ping", mode="quorum:2", timeout=5)
    assert quorum.complete and len([r for r in quorum.replies.values() if r.ok]) >= 2
    first = await op.bus.request("all", "ping", mode="first", timeout=5)
    assert first.complete and len(first.replies) >= 1
    refused_first = await op.bus.request("all", "nope", mode="first", timeout=5)
    assert refused_first.complete and not next(iter(refused_first.replies.values())).ok
    refused_any = await op.bus.request("all", "nope", mode="any", timeout=0.5)
    assert not refused_any.complete


async def test_a_dead_device_is_missing_at_once_not_at_the_timeout(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    await devs[3].stop(crash=True)
    await devs[2].stop()
    await settle()
    result = await op.bus.request("all", "ping", timeout=30)
    assert result.missing == {"d2": "left", "d3": "dead"}
    assert sorted(result.replies) == ["d0", "d1"] and not result.complete
    assert result.elapsed_ms < 1000
    alone = await op.bus.request("d3", "ping", timeout=30)
    assert alone.missing == {"d3": "dead"} and alone.elapsed_ms < 1000


async def test_an_unknown_device_times_out_and_is_named(fleet):
    make, _ = fleet
    _, op = await four_devices_and_an_operator(make)
    result = await op.bus.request("ghost", "ping", timeout=0.3)
    assert result.missing == {"ghost": "timeout"} and not result.complete


async def test_refusals_get_error_replies_and_are_in_the_ledger(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    d0 = devs[0]
    cases = [
        (op, "nope", {}, "unknown_command"),
        (devs[1], "bump", {"by": 1}, "forbidden"),     # a device may not mutate
        (op, "bump", {"by": "x"}, "bad_args"),
        (op, "bump", {"byy": 1}, "bad_args"),
        (op, "slow", {}, "timeout"),
    ]
    for caller, cmd, args, code in cases:
        result = await caller.bus.request("d0", cmd, args, timeout=5)
        assert result.replies["d0"].error["code"] == code, (cmd, result.to_dict())
        assert result.missing == {"d0": f"refused: {code}"}
    ok = await op.bus.request("d0", "bump", {"by": 2}, timeout=5)
    assert ok.complete and ok.replies["d0"].result == {"by": 2}
    entries = recorded_runs(d0.ledger.entries(limit=1000))
    assert [(e["cmd"], e["ok"], e.get("error")) for e in entries] == [
        ("nope", False, "unknown_command"), ("bump", False, "forbidden"),
        ("bump", False, "bad_args"), ("bump", False, "bad_args"), ("slow", False, "timeout"),
        ("bump", True, None)]
    assert d0.ledger.verify().ok
    # The policy can open a command to more roles.
    d0.policy["commands"] = {"roles": {"bump": ["device", "operator"]}}
    assert (await devs[1].bus.request("d0", "bump", {"by": 3}, timeout=5)).complete


async def test_expired_requests_are_refused(fleet):
    make, clock = fleet
    devs, op = await four_devices_and_an_operator(make)
    req = op.channel.seal("cmd", {"cmd": "ping", "args": {}, "deadline_ms": NOW - 1,
                                  "reply_to": TOPICS.reply("op", "r1"),
                                  "cert": op.identity.certificate.to_dict()})
    await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert devs[0].server.refused["expired"] == 1 and devs[0].calls == []
    del clock


async def test_redelivery_runs_nothing_twice_even_after_a_restart(fleet, tmp_path):
    make, clock = fleet
    devs, op = await four_devices_and_an_operator(make)
    got = []
    await op.transport.subscribe(TOPICS.reply("op", "r2"), got.append)
    req = op.channel.seal("cmd", {"cmd": "bump", "args": {"by": 5}, "reply_to":
                                  TOPICS.reply("op", "r2"), "cert":
                                  op.identity.certificate.to_dict()})
    for _ in range(2):  # QoS 1 redelivery: the same envelope again
        await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
        await settle()
    d0 = devs[0]
    assert d0.calls == [req.id] and len(got) == 1
    # Restarted with a persistent session: the broker redelivers; the replay guard
    # is new, the command log is not.
    await d0.stop()
    again = await make("d0", groups=["east"])
    await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert again.calls == [] and again.server.duplicates == 1
    assert len(got) == 2
    first, second = (parse_envelope(m.payload).body for m in got)
    assert first == second and first["result"] == {"by": 5}
    done = again.db.conn.execute("SELECT count(*) FROM command_log").fetchone()[0]
    assert done == 1
    del clock, tmp_path


async def test_refusals_are_rate_limited_per_caller(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    d0, pest = devs[0], devs[1]
    for i in range(40):
        req = pest.channel.seal("cmd", {"cmd": "bump", "args": {"by": i}})
        await pest.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert d0.server.refused["forbidden"] == 40
    assert d0.server.rate_limited == 30  # a burst of 10, then nothing
    assert len(recorded_runs(d0.ledger.entries(limit=1000))) == 10
    # Another caller is not affected.
    assert (await op.bus.request("d0", "ping", timeout=5)).complete


async def test_replies_go_only_to_the_callers_own_inbox(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    req = devs[1].channel.seal("cmd", {"cmd": "ping", "args": {},
                                       "reply_to": TOPICS.reply("op", "steal")})
    await devs[1].transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert devs[0].server.refused["bad_reply_topic"] == 1 and devs[0].calls == []
    del op



async def spy(node, topic_filter):
    """Raw wire payloads on ``topic_filter``, as ``node``'s transport receives them."""
    seen: list = []
    await node.transport.subscribe(topic_filter, seen.append)
    return seen


async def test_replies_are_maced_for_a_bus_caller_and_signed_for_one_that_did_not_ask(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    wire = await spy(op, TOPICS.filter("reply", "op", "+"))
    result = await op.bus.request("all", "ping", timeout=5)
    assert result.complete and len(result.replies) == 4
    replies = [parse_envelope(m.payload) for m in wire]
    assert len(replies) == 4
    assert all(env.mac is not None and env.sig is None for env in replies)
    # A request without "reply_mac" (an older caller) gets a signed reply.
    d1_wire = await spy(devs[1], TOPICS.filter("reply", "d1", "+"))
    req = devs[1].channel.seal("cmd", {"cmd": "ping", "args": {},
                                       "reply_to": TOPICS.reply("d1", "old")})
    await devs[1].transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    (signed,) = [parse_envelope(m.payload) for m in d1_wire]
    assert signed.sig is not None and signed.mac is None and signed.body["re"] == req.id
    # It passed d1's gate and reached its bus, which asked nothing under "old".
    assert devs[1].bus.late_replies == 1 and not devs[1].channel.dropped


async def test_a_reply_that_names_another_command_is_dropped(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    requests = await spy(devs[0], TOPICS.cmd("d0"))
    asking = asyncio.ensure_future(op.bus.request("d0", "slow", timeout=5))
    await settle()
    (request,) = [parse_envelope(m.payload) for m in requests]
    # d0 (or a broker moving d0's replies between requests) answers on the right
    # topic with a reply to some other command: not taken as the answer.
    devs[0].channel.publish_nowait(request.body["reply_to"], "reply",
                                   {"re": "another", "device": "d0", "ok": True},
                                   mac_for="op")
    await settle()
    assert op.bus.late_replies == 1 and not asking.done()
    result = await asking  # the real reply: slow timed out on d0 after 0.2 s
    assert result.replies["d0"].error["code"] == "timeout"


async def test_read_only_commands_store_no_reply_and_share_a_ledger_entry_per_window(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    d0 = devs[0]
    pings = await asyncio.gather(*(op.bus.request("d0", "ping", timeout=5) for _ in range(12)))
    assert all(r.complete for r in pings)
    assert (await op.bus.request("d0", "bump", {"by": 1}, timeout=5)).complete
    assert (await op.bus.request("d0", "ping", timeout=5)).complete
    await settle()
    # The pings answered before the bump are written before it, in one entry, at the
    # latest in the bump's transaction; the last ping waits for its window.
    kinds = [e.kind for e in d0.ledger.entries(limit=1000) if e.kind.startswith("command")]
    assert kinds == ["commands", "command"]
    await asyncio.sleep(AUDIT_WINDOW_S)
    entries = [e for e in d0.ledger.entries(limit=1000) if e.kind.startswith("command")]
    assert [e.kind for e in entries] == ["commands", "command", "commands"]
    runs = recorded_runs(entries)
    assert [r["cmd"] for r in runs] == ["ping"] * 12 + ["bump", "ping"]
    assert len({r["id"] for r in runs}) == 14  # each execution its own record
    assert all(r["by"] == "op" and r["ok"] for r in runs)
    assert d0.ledger.verify().ok
    stored = d0.db.conn.execute("SELECT command FROM command_log").fetchall()
    assert stored == [("bump",)]


async def test_a_full_batch_of_read_only_runs_is_written_at_once_and_stop_writes_the_rest(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    d0 = devs[0]
    n = AUDIT_MAX_RUNS + 5
    results = await asyncio.gather(*(op.bus.request("d0", "ping", timeout=5) for _ in range(n)))
    assert all(r.complete for r in results)
    batches = [e.body["runs"] for e in d0.ledger.entries(limit=1000) if e.kind == "commands"]
    assert [len(b) for b in batches] == [AUDIT_MAX_RUNS]  # no waiting for the window
    await d0.server.stop()
    runs = recorded_runs(d0.ledger.entries(limit=1000))
    assert len(runs) == n and len({r["id"] for r in runs}) == n
    assert d0.ledger.verify().ok


async def test_a_read_only_command_runs_again_after_a_restart_a_mutating_one_does_not(fleet):
    # The documented trade-off: a redelivered ping after a restart (replay guard gone,
    # no stored reply) is answered afresh, which is harmless for a read-only command.
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    got = []
    await op.transport.subscribe(TOPICS.filter("reply", "op", "+"), got.append)
    cert = op.identity.certificate.to_dict()
    ping = op.channel.seal("cmd", {"cmd": "ping", "args": {}, "cert": cert,
                                   "reply_to": TOPICS.reply("op", "p")})
    bump = op.channel.seal("cmd", {"cmd": "bump", "args": {"by": 1}, "cert": cert,
                                   "reply_to": TOPICS.reply("op", "b")})
    for req in (ping, bump, ping, bump):  # redelivered within the session: replay guard
        await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert devs[0].calls == [ping.id, bump.id] and len(got) == 2
    await devs[0].stop()
    again = await make("d0", groups=["east"])
    for req in (ping, bump):
        await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert again.calls == [ping.id] and again.server.duplicates == 1
    assert len(got) == 4
    await asyncio.sleep(AUDIT_WINDOW_S)
    runs = [r["cmd"] for r in recorded_runs(again.ledger.entries(limit=100))]
    assert runs == ["ping", "bump", "ping"]



async def test_a_command_name_that_is_not_a_string_gets_a_bad_request_reply(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    got = []
    await op.transport.subscribe(TOPICS.reply("op", "odd"), got.append)
    req = op.channel.seal("cmd", {"cmd": ["ping"], "args": {},
                                  "reply_to": TOPICS.reply("op", "odd"),
                                  "cert": op.identity.certificate.to_dict()})
    await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert devs[0].server.refused["bad_request"] == 1
    assert [parse_envelope(m.payload).body["error"]["code"] for m in got] == ["bad_request"]


async def test_plain_function_handlers_answer_inline_fail_cleanly_and_run_once(fleet):
    make, _ = fleet
    devs, op = await four_devices_and_an_operator(make)
    d0 = devs[0]
    ok = await op.bus.request("d0", "peek", {"crash": False}, timeout=5)
    assert ok.complete and ok.replies["d0"].result == {"seen": True}
    crashed = await op.bus.request("d0", "peek", {"crash": True}, timeout=5)
    error = crashed.replies["d0"].error
    assert error["code"] == "failed" and "ValueError: sensor unplugged" in error["message"]
    assert (await op.bus.request("d0", "peek", {"crash": False}, timeout=5)).complete
    assert d0.server.stats()["running"] == 0  # no task was made for any of them
    # A plain mutating handler is stored with its reply (what a redelivery after a
    # restart is answered from) before the reply goes out.
    got = []
    await op.transport.subscribe(TOPICS.reply("op", "t1"), got.append)
    req = op.channel.seal("cmd", {"cmd": "tick", "args": {"n": 3}, "cert":
                                  op.identity.certificate.to_dict(),
                                  "reply_to": TOPICS.reply("op", "t1")})
    await op.transport.publish(TOPICS.cmd("d0"), req.encode(), qos=1)
    await settle()
    assert d0.calls.count(req.id) == 1
    assert [parse_envelope(m.payload).body["result"] for m in got] == [{"ticked": 3}]
    stored = d0.db.conn.execute("SELECT reply FROM command_log WHERE id = ?",
                                (req.id,)).fetchone()
    assert json.loads(stored[0])["result"] == {"ticked": 3}
    await d0.server.stop()
    runs = recorded_runs(d0.ledger.entries(limit=1000))
    assert [(r["cmd"], r["ok"], r.get("error")) for r in runs] == [
        ("peek", True, None), ("peek", False, "failed"), ("peek", True, None),
        ("tick", True, None)]
    assert d0.ledger.verify().ok
