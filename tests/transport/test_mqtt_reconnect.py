"""Losing the broker and getting it back: what a Pi on a flaky link lives through."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from agent.errors import BrokerUnavailable
from agent.transport import MqttTransport, Transport
from tests.support.broker import BrokerProxy
from tests.transport.inbox import Inbox


class ConnectionWatch:
    """Records a transport's connection changes; ``await watch.until(False)``."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.changes: list[bool] = []
        self._changed = asyncio.Event()
        transport.add_connection_listener(self._on_change)

    def _on_change(self, state: bool) -> None:
        self.changes.append(state)
        self._changed.set()

    async def until(self, state: bool, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while self.transport.connected != state:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)


class CountingRand:
    """A jitter source that returns ``value`` and lets a test wait for the n-th call."""

    def __init__(self, value: float):
        self.value = value
        self.calls: list[float] = []
        self._called = asyncio.Event()

    def __call__(self) -> float:
        self.calls.append(time.monotonic())
        self._called.set()
        return self.value

    async def until_called(self, n: int, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while len(self.calls) < n:
                self._called.clear()
                await self._called.wait()
        await asyncio.wait_for(wait(), timeout)


async def subscribed_and_saved(transport: MqttTransport, topic_filter: str, probe: str,
                               publisher: MqttTransport) -> Inbox:
    """Subscribe, then make one round trip, so the broker has autosaved the session."""
    inbox = Inbox()
    await transport.subscribe(topic_filter, inbox, qos=1)
    await publisher.publish(probe, b"probe", qos=1)
    await inbox.wait_for(1)
    inbox.messages.clear()
    return inbox


async def make(async_cleanup, settings, **kw) -> MqttTransport:
    transport = MqttTransport(settings, **kw)
    async_cleanup.push(transport.stop)
    return transport


async def test_broker_killed_and_restarted_transport_reconnects_and_delivers(
        broker, async_cleanup, topic):
    pub = await make(async_cleanup, broker.client_settings("pub"))
    sub = await make(async_cleanup, broker.client_settings("sub"))
    pub_watch, sub_watch = ConnectionWatch(pub), ConnectionWatch(sub)
    for t in (pub, sub):
        await t.start()
        await t.wait_connected(5)
    inbox = await subscribed_and_saved(sub, f"{topic}/#", f"{topic}/probe", pub)

    broker.kill()
    await pub_watch.until(False)
    await sub_watch.until(False)
    assert isinstance(pub.last_error, BrokerUnavailable)
    for i in range(5):
        await pub.publish(f"{topic}/m", b"%d" % i, qos=1)
    assert pub.stats.extra["offline_queue_depth"] == 5

    broker.restart()
    await pub.wait_connected(5)
    await sub.wait_connected(5)
    # QoS 1 is at least once: the probe may come again, as the broker saved it unacked.
    queued = await inbox.wait_for(5, where=lambda m: m.payload != b"probe")
    assert [m.payload for m in queued] == [b"0", b"1", b"2", b"3", b"4"]
    assert pub.stats.extra["offline_queue_depth"] == 0
    assert (pub.stats.reconnects, sub.stats.reconnects) == (1, 1)
    assert pub_watch.changes == sub_watch.changes == [True, False, True]

    await pub.publish(f"{topic}/after", b"after", qos=1)  # the subscription works again
    await inbox.wait_for(1, where=lambda m: m.payload == b"after")


async def test_offline_queue_keeps_the_newest_and_counts_what_it_drops(
        broker, async_cleanup, topic):
    helper = await make(async_cleanup, broker.client_settings("helper"))
    sub = await make(async_cleanup, broker.client_settings("sub"))
    for t in (helper, sub):
        await t.start()
        await t.wait_connected(5)
    inbox = await subscribed_and_saved(sub, f"{topic}/#", f"{topic}/probe", helper)
    broker.kill()
    await ConnectionWatch(sub).until(False)

    pub = await make(async_cleanup, broker.client_settings("pub", max_offline_queue=3))
    began = time.monotonic()
    await pub.start()
    assert time.monotonic() - began < 0.5  # start() does not wait for a broker
    assert not pub.connected
    for i in range(5):
        await pub.publish(f"{topic}/m", b"%d" % i, qos=1)
    await pub.publish(f"{topic}/m", b"qos0, gone", qos=0)
    await pub.publish(f"{topic}/r", b"retained", qos=0, retain=True)
    assert pub.stats.queued_offline == 6
    assert pub.stats.dropped_offline == 4  # "0", "1", "2" pushed out; QoS 0 not kept
    assert pub.stats.extra["offline_queue_depth"] == 3

    broker.restart()
    await pub.wait_connected(5)
    await sub.wait_connected(5)
    arrived = [m.payload for m in await inbox.barrier(pub, f"{topic}/marker")]
    assert [p for p in arrived if p in (b"0", b"1", b"2", b"3", b"4")] == [b"3", b"4"]
    # Live, or on the resubscribe if the publisher was back first (QoS 0 is not
    # queued for an offline session): either way the retained state arrives.
    assert b"retained" in arrived


async def test_reconnect_backs_off_with_injected_jitter_and_resets_on_success(
        broker, async_cleanup):
    broker.kill()
    rand = CountingRand(1.0)  # the top of each window: delays 0.05, 0.1, 0.2, 0.4, 0.5 ...
    t = await make(async_cleanup, broker.client_settings(
        "backoff", backoff_base_s=0.05, backoff_cap_s=0.5), rand=rand)
    await t.start()
    await rand.until_called(4)
    gaps = [b - a for a, b in zip(rand.calls[:3], rand.calls[1:4], strict=True)]
    for gap, delay in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= delay * 0.95, (gaps, "a retry came before its backoff delay")
    assert t.stats.extra["reconnect_attempt"] >= 4
    assert t.stats.extra["connect_failures"] >= 4
    assert not t.connected

    broker.restart()
    await t.wait_connected(5)
    assert t.stats.extra["reconnect_attempt"] == 0
    assert t.last_error is None
    assert t.stats.reconnects == 0  # the first connection is not a reconnection


async def test_message_published_right_after_start_is_sent_once_connected(
        broker, async_cleanup, topic):
    sub = await make(async_cleanup, broker.client_settings("sub"))
    await sub.start()
    await sub.wait_connected(5)
    inbox = Inbox()
    await sub.subscribe(f"{topic}/#", inbox)
    pub = await make(async_cleanup, broker.client_settings("pub"))
    await pub.start()
    await pub.publish(f"{topic}/birth", b"alive", qos=1, retain=True)
    await pub.publish(f"{topic}/hb", b"beat", qos=1)
    await inbox.wait_for(2)
    assert inbox.payloads == [b"alive", b"beat"]


async def test_stop_waits_for_qos1_acknowledgements(broker, async_cleanup, topic):
    sub = await make(async_cleanup, broker.client_settings("sub"))
    pub = await make(async_cleanup, broker.client_settings("pub"))
    for t in (sub, pub):
        await t.start()
        await t.wait_connected(5)
    inbox = Inbox()
    await sub.subscribe(f"{topic}/#", inbox)
    for i in range(300):
        await pub.publish(f"{topic}/burst", b"%d" % i, qos=1)
    await pub.stop()
    assert pub.stats.dropped_offline == 0
    await inbox.wait_for(300)
    assert inbox.payloads == [b"%d" % i for i in range(300)]


async def test_wait_connected_times_out_with_the_reason(broker, async_cleanup):
    broker.kill()
    t = await make(async_cleanup, broker.client_settings("down"))
    await t.start()
    with pytest.raises(BrokerUnavailable, match="no connection"):
        await t.wait_connected(0.2)


@pytest.mark.async_timeout(15)
async def test_silent_link_is_noticed_by_keepalive_and_reconnected(broker, async_cleanup, topic):
    proxy = BrokerProxy(broker.port)
    await proxy.start()
    async_cleanup.push(proxy.close)
    t = await make(async_cleanup, broker.client_settings("silent", url=proxy.url, keepalive=1))
    watch = ConnectionWatch(t)
    await t.start()
    await t.wait_connected(5)
    inbox = Inbox()
    await t.subscribe(f"{topic}/#", inbox)

    proxy.freeze()  # no FIN, no RST: only our own PINGREQ going unanswered can tell
    began = time.monotonic()
    await watch.until(False, timeout=6)
    assert time.monotonic() - began < 4  # keepalive 1 s: ping, no answer, drop
    proxy.thaw()
    await watch.until(True, timeout=5)
    await t.publish(f"{topic}/x", b"back", qos=1)
    assert (await inbox.wait_for(1))[0].payload == b"back"


async def test_broker_that_never_answers_connect_times_out_and_stop_cleans_up(
        broker, async_cleanup):
    proxy = BrokerProxy(broker.port)
    await proxy.start()
    async_cleanup.push(proxy.close)
    proxy.freeze()
    rand = CountingRand(0.5)
    t = MqttTransport(broker.client_settings("mute", url=proxy.url, connect_timeout_s=0.2),
                      rand=rand)
    await t.start()
    await rand.until_called(2)  # two attempts timed out waiting for CONNACK
    assert "CONNACK" in str(t.last_error)
    await t.stop()  # in the middle of a third attempt
    assert not t.connected
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("igris.")]
    ours = [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == proxy.port and c.status != psutil.CONN_TIME_WAIT]
    assert ours == []  # no client socket left open towards the (silent) broker


async def test_stop_while_waiting_for_connack_closes_the_socket(broker, async_cleanup):
    proxy = BrokerProxy(broker.port)
    await proxy.start()
    async_cleanup.push(proxy.close)
    proxy.freeze()
    t = MqttTransport(broker.client_settings("waiting", url=proxy.url, connect_timeout_s=30,
                                             stop_timeout_s=0.2))
    await t.start()
    await proxy.wait_connects(1)  # our CONNECT left: we are waiting for the CONNACK
    await t.stop()
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("igris.")]
    ours = [c for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == proxy.port and c.status != psutil.CONN_TIME_WAIT]
    assert ours == []
