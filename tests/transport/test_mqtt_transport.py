"""MQTT-only behaviour, against a real Mosquitto: socket options, outside observers,
TLS, protocol 3.1.1, persistent sessions, and that nothing is left behind."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time

import psutil
import pytest

from agent.errors import BrokerUnavailable, ConfigInvalid
from agent.transport import MqttTransport, Will
from tests.support.broker import BrokerProxy, MosquittoBroker, make_test_pki
from tests.transport.inbox import Inbox


async def started(async_cleanup, settings, **kw) -> MqttTransport:
    transport = MqttTransport(settings, **kw)
    async_cleanup.push(transport.stop)
    await transport.start()
    await transport.wait_connected(5)
    return transport


async def linked(async_cleanup, broker, name, topic_filter):
    """A sender and a receiver (client ids ``<name>-tx`` and ``<name>-rx``), and the
    receiver's inbox for ``topic_filter`` (QoS 1)."""
    sender = await started(async_cleanup, broker.client_settings(f"{name}-tx"))
    receiver = await started(async_cleanup, broker.client_settings(f"{name}-rx"))
    inbox = Inbox()
    await receiver.subscribe(topic_filter, inbox, qos=1)
    return sender, receiver, inbox


async def test_client_socket_has_tcp_nodelay(broker, async_cleanup):
    t = await started(async_cleanup, broker.client_settings("nodelay"))
    # White-box on purpose: the option lives on paho's socket and nothing else shows it.
    sock = t._client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_birth_and_will_seen_by_mosquitto_sub(broker, async_cleanup, topic):
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        pytest.skip("mosquitto_sub missing; install it with: apt-get install mosquitto-clients")
    state = f"{topic}/node/pi-01/state"
    sub = await asyncio.create_subprocess_exec(
        tool, "-h", broker.host, "-p", str(broker.port), "-t", state, "-v", "-q", "1",
        "-C", "2", "-W", "10", stdout=asyncio.subprocess.PIPE)
    async_cleanup.push(lambda: _reap(sub))
    dev = MqttTransport(broker.client_settings("pi-01"))
    dev.set_will(Will(state, b"dead", qos=1, retain=True))
    async_cleanup.push(dev.stop)
    await dev.start()
    await dev.publish(state, b"alive", qos=1, retain=True)  # may go out before CONNACK: queued
    assert sub.stdout is not None
    birth = await asyncio.wait_for(sub.stdout.readline(), 5)
    assert birth == f"{state} alive\n".encode()
    await dev.abort()
    death = await asyncio.wait_for(sub.stdout.readline(), 5)
    assert death == f"{state} dead\n".encode()
    assert await asyncio.wait_for(sub.wait(), 5) == 0


async def test_stop_right_after_unsubscribing_is_clean_no_will(broker, async_cleanup, topic):
    # Regression: a DISCONNECT sent while UNSUBACKs were still on the way closed the
    # socket with unread data; Mosquitto saw a broken pipe and published the will.
    watcher = await started(async_cleanup, broker.client_settings("watcher"))
    inbox = Inbox()
    state = f"{topic}/node/pi-01/state"
    await watcher.subscribe(state, inbox)
    dev = MqttTransport(broker.client_settings("pi-01"))
    dev.set_will(Will(state, b"dead", qos=1))
    await dev.start()
    await dev.wait_connected(5)
    subs = [await dev.subscribe(f"{topic}/f{i}", lambda _m: None) for i in range(5)]
    await dev.publish(state, b"bye", qos=1)
    for sub in subs:
        sub.cancel()
    await dev.stop()
    await inbox.wait_for(1)
    await asyncio.sleep(0.3)
    assert inbox.payloads == [b"bye"]


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_tls_with_client_certificate(tmp_path, async_cleanup, topic):
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing; install it with: apt-get install openssl")
    pki = make_test_pki(tmp_path / "pki")
    with MosquittoBroker(tmp_path / "broker", tls=pki) as tls_broker:
        assert tls_broker.url.startswith("mqtts://")
        t = await started(async_cleanup, tls_broker.client_settings("pi-01"))
        inbox = Inbox()
        await t.subscribe(f"{topic}/#", inbox)
        for i in range(20):  # several packets per TLS record: exercises the pending() path
            await t.publish(f"{topic}/x", b"%d" % i, qos=1)
        await inbox.wait_for(20)
        assert inbox.payloads == [b"%d" % i for i in range(20)]

        failed = asyncio.Event()
        anonymous = MqttTransport(
            tls_broker.client_settings("nocert", cert_file=None, key_file=None),
            rand=lambda: failed.set() or 0.5)
        async_cleanup.push(anonymous.stop)
        await anonymous.start()
        await asyncio.wait_for(failed.wait(), 5)
        assert not anonymous.connected
        assert isinstance(anonymous.last_error, BrokerUnavailable)
        await anonymous.stop()
        await t.stop()


async def test_unreadable_tls_files_fail_at_start(broker):
    t = MqttTransport(broker.client_settings(
        "pi-01", url=broker.url.replace("mqtt:", "mqtts:"), ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigInvalid, match=r"ca\.pem"):
        await t.start()


async def test_forced_311_works_without_response_topic(broker, async_cleanup, topic):
    v3 = await started(async_cleanup, broker.client_settings("v3", protocol="3.1.1"))
    v5 = await started(async_cleanup, broker.client_settings("v5"))
    assert (v3.protocol, v3.supports_response_topic) == ("3.1.1", False)
    at_v3, at_v5 = Inbox(), Inbox()
    await v3.subscribe(f"{topic}/to-v3", at_v3)
    await v5.subscribe(f"{topic}/to-v5", at_v5)
    await v5.publish(f"{topic}/to-v3", b"q", qos=1, response_topic=f"{topic}/r",
                     correlation_data=b"c")
    await v3.publish(f"{topic}/to-v5", b"q", qos=1, response_topic=f"{topic}/r",
                     correlation_data=b"c")
    [got3], [got5] = await at_v3.wait_for(1), await at_v5.wait_for(1)
    assert (got3.response_topic, got3.correlation_data) == (None, None)
    assert (got5.response_topic, got5.correlation_data) == (None, None)


async def test_falls_back_to_311_when_broker_refuses_v5(broker, async_cleanup, topic, caplog):
    proxy = BrokerProxy(broker.port, refuse_v5=True)
    await proxy.start()
    async_cleanup.push(proxy.close)
    t = await started(async_cleanup, broker.client_settings("old-broker", url=proxy.url))
    assert (t.protocol, t.supports_response_topic, proxy.refused) == ("3.1.1", False, 1)
    assert "falling back to 3.1.1" in caplog.text
    inbox = Inbox()
    await t.subscribe(f"{topic}/#", inbox)
    await t.publish(f"{topic}/x", b"through the proxy", qos=1)
    assert (await inbox.wait_for(1))[0].payload == b"through the proxy"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_persistent_session_keeps_qos1_sent_while_device_was_away(
        broker, async_cleanup, topic, protocol):
    settings = broker.client_settings("pi-07", protocol=protocol)
    dev = await started(async_cleanup, settings)
    await dev.subscribe(f"{topic}/cmd/+", Inbox())
    await dev.stop()
    operator = await started(async_cleanup, broker.client_settings("operator"))
    await operator.publish(f"{topic}/cmd/pi-07", b"reboot", qos=1)
    await operator.stop()  # returns once the broker acknowledged the command

    again, inbox = MqttTransport(settings), Inbox()
    async_cleanup.push(again.stop)
    await again.subscribe(f"{topic}/cmd/+", inbox)  # before start: ready for the queued one
    await again.start()
    [cmd] = await inbox.wait_for(1)
    assert (cmd.topic, cmd.payload) == (f"{topic}/cmd/pi-07", b"reboot")


async def test_stop_and_abort_leave_no_tasks_or_sockets(broker, async_cleanup, topic):
    process = psutil.Process()
    tasks_before = asyncio.all_tasks()
    fds_before = process.num_fds()
    for end in ("stop", "abort", "stop"):
        t = await started(async_cleanup, broker.client_settings(f"leak-{end}"))
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert f"igris.mqtt.reconnect[leak-{end}]" in names
        assert f"igris.mqtt.misc[leak-{end}]" in names
        await t.subscribe(f"{topic}/#", Inbox())
        await t.publish(f"{topic}/x", b"x", qos=1)
        await getattr(t, end)()
    assert asyncio.all_tasks() == tasks_before
    assert process.num_fds() == fds_before


@pytest.mark.async_timeout(10)
async def test_idle_connected_transport_uses_almost_no_cpu(broker, async_cleanup, topic):
    t = await started(async_cleanup, broker.client_settings("idle"))
    await t.subscribe(f"{topic}/#", Inbox())
    before = time.process_time()
    await asyncio.sleep(1.5)  # measuring idleness: nothing to wait for but time
    assert time.process_time() - before < 0.05


async def test_a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order(
        broker, async_cleanup, topic):
    # Publishes of one loop turn are written together on the next; what the
    # socket cannot take then waits for the selector to say it is writable.
    sender, _, inbox = await linked(async_cleanup, broker, "burst", f"{topic}/burst")
    # A small send buffer, so a burst fills it for sure (white-box: paho's socket).
    sender._client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    size, count = 60_000, 50
    loop = asyncio.get_running_loop()
    registered = []
    add_writer = loop.add_writer
    loop.add_writer = lambda *a: (registered.append(a[0]), add_writer(*a))  # type: ignore
    try:
        for i in range(count):
            await sender.publish(f"{topic}/burst", i.to_bytes(4, "big") * (size // 4), qos=1)
        got = await inbox.wait_for(count, timeout=10)
    finally:
        del loop.add_writer
    assert registered  # the socket was full: the selector finished the job
    assert [int.from_bytes(m.payload[:4], "big") for m in got] == list(range(count))
    assert all(len(m.payload) == size for m in got)
    await asyncio.wait_for(sender._drained.wait(), 5)  # every PUBACK came back
    assert not sender._writer_on


async def test_publishes_of_one_turn_are_written_without_registering_a_writer(
        broker, async_cleanup, topic):
    sender, _, inbox = await linked(async_cleanup, broker, "turn", f"{topic}/turn")
    loop = asyncio.get_running_loop()
    registered = []
    add_writer = loop.add_writer
    loop.add_writer = lambda *a: (registered.append(a[0]), add_writer(*a))  # type: ignore
    sends = []
    send = sender._client._sock_send  # white-box: paho writes each packet with this
    sender._client._sock_send = lambda data: (sends.append(len(data)), send(data))[1]
    try:
        for i in range(20):  # QoS 1 and 0 mixed: a QoS 0 one is done once it is written
            sender.publish_nowait(f"{topic}/turn", b"%d" % i, qos=1 if i % 3 else 0)
        await sender.publish(f"{topic}/turn", b"20", qos=1)
        got = await inbox.wait_for(21)
    finally:
        del loop.add_writer
    assert [m.payload for m in got] == [b"%d" % i for i in range(21)]
    assert registered == []
    # Joined: a send() per QoS 0 publish (its own bookkeeping runs when it is
    # written) and one for the rest, not one per packet.
    assert len(sends) == 8, sends
    await asyncio.wait_for(sender._drained.wait(), 5)  # every PUBACK came back


async def test_a_reply_made_while_reading_is_written_before_the_loop_runs_anything_else(
        broker, async_cleanup, topic):
    # A process with many connections (a gateway, the bus bench) reads them all in
    # one loop turn: a reply must not wait until every other socket was read.
    echo, asker, replies = await linked(async_cleanup, broker, "echo", f"{topic}/reply")
    loop = asyncio.get_running_loop()
    unwritten: list[bool] = []

    def answer(message):
        # Queued ahead of the reply: it runs after whatever the read burst wrote.
        loop.call_soon(lambda: unwritten.append(echo._client.want_write()))
        echo.publish_nowait(f"{topic}/reply", message.payload, qos=1)

    await echo.subscribe(f"{topic}/ask", answer, qos=1)
    for i in range(5):
        await asker.publish(f"{topic}/ask", b"%d" % i, qos=1)
        await replies.wait_for(i + 1)
    assert unwritten == [False] * 5


@pytest.mark.parametrize(("response_topic", "correlation"), [
    ("igris/lab/reply/op/r1", b"r1"), (None, b"\x00" * 300), ("t/" + "x" * 200, None),
    ("", b"")])
def test_publish_properties_encode_as_paho_does(response_topic, correlation):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from agent.transport.mqtt import _PublishProperties

    expected = Properties(PacketTypes.PUBLISH)
    if response_topic:
        expected.ResponseTopic = response_topic
    if correlation is not None:
        expected.CorrelationData = correlation
    assert _PublishProperties(response_topic, correlation).pack() == expected.pack()
