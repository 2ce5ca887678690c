"""The gateway on the in-process transport, with the real lite agent (CPython) as its device.

The lite agent talks through a small ``umqtt``-shaped adapter over an
``InprocTransport``; the gateway runs on the real signed channel of an
enrolled device, with an injected clock, and reads records written by
``enroll_lite``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from agent.bus.registry import CommandCall
from agent.errors import CommandRefused, ConfigInvalid, EnvelopeRejected
from agent.gateway import Gateway, LiteKeyring, LiteTopics, lite_command
from agent.identity import Identity, SignedChannel, TrustStore
from agent.identity.lite import enroll_lite, read_lite_record
from agent.transport import InprocTransport
from agent.transport.base import Will
from agent.transport.inproc import InprocBroker
from agent.wire import (
    Envelope,
    HybridClock,
    Topics,
    mac_envelope,
    parse_envelope,
    verify_envelope_mac,
)
from tests.lite.memory_mqtt import MemoryPins
from tests.support.clock import Clock
from tests.support.inproc_fleet import NOW, settle

LITE_AGENT = Path(__file__).resolve().parents[2] / "targets" / "micropython" / "lite_agent.py"
_spec = importlib.util.spec_from_file_location("lite_agent", LITE_AGENT)
assert _spec is not None and _spec.loader is not None
lite_agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lite_agent)


class InprocUmqtt:
    """``umqtt.simple.MQTTClient``'s calls over an ``InprocTransport`` (tests run them on the
    loop and then let it settle)."""

    def __init__(self, transport: InprocTransport):
        self.transport = transport
        self.callback: Any = None
        self.inbox: list[tuple[str, bytes]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def _run(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def set_callback(self, callback: Any) -> None:
        self.callback = callback

    def set_last_will(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self.transport.set_will(Will(topic, msg, qos=qos, retain=retain))

    def connect(self) -> None:
        self._run(self.transport.start())

    def publish(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self._run(self.transport.publish(topic, msg, qos=qos, retain=retain))

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self._run(self.transport.subscribe(
            topic, lambda m: self.inbox.append((m.topic, m.payload)), qos=qos))

    def check_msg(self) -> None:
        if self.inbox:
            topic, payload = self.inbox.pop(0)
            self.callback(topic.encode(), payload)

    def disconnect(self) -> None:
        self._run(self.transport.stop())


class Rig:
    """A gateway (device pi-01) and lite device lite-01 on one in-process hub."""

    def __init__(self, tmp: Path, identity: Identity, clock: Clock):
        self.tmp = tmp
        self.clock = clock
        self.hub = InprocBroker()
        self.transport = InprocTransport(self.hub, client_id="pi-01")
        channel = SignedChannel(self.transport, identity,
                                TrustStore(identity.ca_public, fleet="lab", now_ms=clock),
                                hlc=HybridClock(clock), now_ms=clock)
        self.topics = LiteTopics(Topics("lab"))
        self.drops: list[tuple[str, str]] = []
        self.gateway = Gateway(channel, self.topics, LiteKeyring(tmp / "root" / "lite"),
                               now_ms=clock, on_drop=lambda r, s: self.drops.append((r, s)),
                               command_timeout_s=1.0, tick_s=3600)
        self.enrollment = self.enroll("lite-01")
        self.ticks = 0
        self.board: Any = None

    def enroll(self, device_id: str) -> Any:
        return enroll_lite(self.tmp / device_id, device_id=device_id, fleet="lab",
                           gateway="pi-01", now_ms=NOW, gateway_root=self.tmp / "root",
                           broker_host="127.0.0.1", pins={"relay": 5, "button": 4},
                           writable=("relay",), heartbeat_s=10, telemetry_s=30)

    async def start(self, session: int = 1) -> Any:
        await self.transport.start()
        await self.gateway.start()
        config = json.loads(self.enrollment.config_path.read_text())
        self.board = lite_agent.LiteAgent(
            config, InprocUmqtt(InprocTransport(self.hub, client_id="lite-01")), session,
            pins=MemoryPins({}), read_sensors=lambda: {"celsius": 20.0}, now_ms=self.clock,
            ticks_ms=lambda: self.ticks)
        self.board.start()
        await settle()
        return self.board

    async def step(self, seconds: float) -> None:
        self.ticks += int(seconds * 1000)
        self.clock.ms += int(seconds * 1000)
        self.board.poll()
        await settle()

    async def inject(self, leaf: str, env: Envelope, *, device: str = "lite-01",
                     retain: bool = False) -> None:
        await self.transport.publish(self.topics.topic(device, leaf), env.encode(), qos=1,
                                     retain=retain)
        await settle()

    async def command(self, name: str, **args: Any) -> Any:
        """Run a gateway bus command's handler as the command server would."""
        spec = {s.name: s for s in self.gateway.commands()}[name]
        call = CommandCall("req-1", name, spec.check_args(args), "op1", "operator")
        task = asyncio.ensure_future(spec.handler(call))
        for _ in range(20):  # the board answers on its next poll
            await settle()
            self.board.poll()
        return await task

    async def close(self) -> None:
        await self.gateway.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def rig(tmp_path: Path, identity: Identity, clock: Clock, async_cleanup: Any) -> Rig:
    made = Rig(tmp_path, identity, clock)
    async_cleanup.push(made.close)
    return made


def _lite(src: str, kind: str, body: dict[str, Any], ts: list[int], key: bytes) -> Envelope:
    return mac_envelope(Envelope(src, kind, body, ts), key)


async def test_birth_heartbeat_and_telemetry_make_an_alive_lite_peer(rig: Rig) -> None:
    await rig.start(session=4)
    await rig.step(30)  # heartbeat and telemetry due
    peer = rig.gateway.peers.get("lite-01")
    assert peer is not None
    assert (peer.state, peer.session, peer.via) == ("alive", 4, "pi-01")
    assert peer.info["telemetry"] == {"celsius": 20.0}
    assert peer.info["writable"] == ["relay"]
    assert peer.to_dict()["lite"] is True and peer.to_dict()["role"] == "lite"
    assert rig.gateway.accepted == 3 and not rig.gateway.dropped


async def test_read_only_command_and_gpio_write_round_trip(rig: Rig) -> None:
    await rig.start()
    assert await rig.command("lite.cmd", device="lite-01", cmd="ping") == {
        "pong": True, "device": "lite-01"}
    assert await rig.command("lite.gpio.write", device="lite-01", pin="relay", value=1) == {
        "pin": "relay", "value": 1}
    assert rig.board.pins.levels == {5: 1}
    with pytest.raises(CommandRefused) as refused:
        await rig.command("lite.gpio.write", device="lite-01", pin="button", value=1)
    assert refused.value.code == "forbidden"
    assert rig.gateway.stats()["commands"]["sent"] == 3


async def test_lite_cmd_admits_only_read_only_commands(rig: Rig) -> None:
    spec = {s.name: s for s in rig.gateway.commands()}
    assert not spec["lite.cmd"].mutates and spec["lite.gpio.write"].mutates
    assert "device" not in spec["lite.gpio.write"].roles
    with pytest.raises(CommandRefused, match="expected one of"):
        spec["lite.cmd"].check_args({"device": "lite-01", "cmd": "gpio.write"})


async def test_a_command_to_a_silent_device_times_out(rig: Rig) -> None:
    await rig.start()
    rig.board.client.check_msg = lambda: None  # the board hangs: takes no message
    with pytest.raises(CommandRefused) as exc:
        await rig.command("lite.cmd", device="lite-01", cmd="ping")
    assert exc.value.code == "timeout"
    assert rig.gateway.command_timeouts == 1


async def test_unknown_lite_device_is_refused_before_anything_is_sent(rig: Rig) -> None:
    await rig.start()
    with pytest.raises(CommandRefused) as exc:
        await rig.command("lite.cmd", device="nobody", cmd="ping")
    assert exc.value.code == "unreachable"
    assert rig.gateway.commands_sent == 0


async def test_bad_messages_are_dropped_counted_and_tallied(rig: Rig, clock: Clock) -> None:
    await rig.start()
    key = rig.enrollment.record.key
    ts = [clock() + 1000, 0]
    await rig.inject("hb", _lite("lite-01", "state", {"session": 1}, ts, bytes(32)))
    await rig.inject("hb", _lite("ghost", "state", {"session": 1}, ts, key), device="ghost")
    await rig.inject("hb", _lite("lite-01", "state", {"session": 1}, ts, key),
                     device="lite-02")
    big = _lite("lite-01", "state", {"session": 1, "pad": "x" * 5000}, ts, key)
    await rig.inject("hb", big)
    good = _lite("lite-01", "state", {"session": 1}, ts, key)
    await rig.inject("hb", good)
    await rig.inject("hb", good)  # the same again: a replay
    await rig.inject("hb", _lite("lite-01", "state", {"session": 0}, [ts[0] + 1, 0], key))
    assert rig.gateway.dropped == {"bad_signature": 1, "unknown_device": 1, "wrong_topic": 1,
                                   "oversize": 1, "replay": 1, "stale_session": 1}
    assert ("bad_signature", "lite-01") in rig.drops and ("unknown_device", "ghost") in rig.drops
    status = rig.gateway.stats()
    assert status["dropped"]["bad_signature"] == 1 and status["enrolled"] == 1


async def test_will_kills_shutdown_leaves_and_a_stale_death_is_ignored(rig: Rig,
                                                                      clock: Clock) -> None:
    board = await rig.start(session=2)
    key = rig.enrollment.record.key
    await rig.inject("state", _lite("lite-01", "death", {"session": 1, "reason": "lost"},
                                    [clock(), 0], key), retain=True)
    assert rig.gateway.peers.get("lite-01").state == "alive"
    assert rig.gateway.dropped["stale_session"] == 1
    await board.client.transport.abort()  # connection lost: the broker sends the will
    await settle()
    assert rig.gateway.peers.get("lite-01").state == "dead"


async def test_graceful_stop_leaves(rig: Rig) -> None:
    board = await rig.start()
    board.stop()
    await settle()
    assert rig.gateway.peers.get("lite-01").state == "left"


async def test_silence_makes_suspect_then_dead(rig: Rig, clock: Clock) -> None:
    await rig.start()
    clock.ms += 31_000  # 3 heartbeat periods of 10 s
    rig.gateway.peers.check_timeouts()
    assert rig.gateway.peers.get("lite-01").state == "suspect"
    clock.ms += 30_000
    rig.gateway.peers.check_timeouts()
    assert rig.gateway.peers.get("lite-01").state == "dead"


async def test_a_device_enrolled_later_is_accepted_without_restart(rig: Rig,
                                                                   clock: Clock) -> None:
    await rig.start()
    later = rig.enroll("lite-02")
    await rig.inject("state", _lite("lite-02", "state", {"session": 1, "heartbeat_s": 5},
                                    [clock(), 0], later.record.key), device="lite-02")
    assert rig.gateway.peers.get("lite-02").state == "alive"
    again = rig.enroll("lite-02")  # a new key: the old one stops working
    await rig.inject("hb", _lite("lite-02", "state", {"session": 1}, [clock() + 5, 0],
                                 later.record.key), device="lite-02")
    assert rig.gateway.dropped["bad_signature"] == 1
    assert read_lite_record(again.record_path).key != later.record.key


def test_board_and_gateway_build_the_same_topics() -> None:
    topics = Topics("lab", "site")
    for leaf in ("state", "hb", "tele", "cmd", "reply"):
        assert lite_agent.lite_topic(topics, "esp-9", leaf) == LiteTopics(topics).topic(
            "esp-9", leaf)


def test_board_config_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    config = {"device_id": "lite-01", "fleet": "lab", "gateway": "gw", "key": "AAAA",
              "broker": {"host": "h"}}
    with pytest.raises(ConfigInvalid, match=r"'key' must be 32 bytes.*igris enroll --lite"):
        lite_agent.check_config(config)
    with pytest.raises(ConfigInvalid, match="unknown key 'heartbeat'"):
        lite_agent.check_config({**config, "heartbeat": 3})
    with pytest.raises(ConfigInvalid, match="'gateway' is missing"):
        lite_agent.check_config({k: v for k, v in config.items() if k != "gateway"})


def test_lite_command_rejected_by_a_board_with_another_key() -> None:
    env = lite_command("gw", bytes(32), [1, 0], 1, "ping", {})
    with pytest.raises(EnvelopeRejected):
        verify_envelope_mac(parse_envelope(env.encode()), bytes(range(32)))
