"""What only the in-process transport needs to show: it is a hub in this process."""

from __future__ import annotations

from agent.transport import InprocBroker, InprocTransport, Will
from tests.transport.inbox import Inbox


async def test_delivery_happens_later_on_the_loop_never_inside_publish(topic):
    t, inbox = InprocTransport(), Inbox()
    await t.start()
    await t.subscribe(f"{topic}/x", inbox)
    await t.publish(f"{topic}/x", b"1")
    assert inbox.messages == []  # as on MQTT: the handler never runs in the publisher's frame
    await inbox.wait_for(1)
    await t.stop()


async def test_without_a_broker_each_transport_has_a_private_hub(topic):
    alone, other = InprocTransport(), InprocTransport()
    mine, theirs = Inbox(), Inbox()
    for t, inbox in ((alone, mine), (other, theirs)):
        await t.start()
        await t.subscribe(f"{topic}/#", inbox)
    await alone.publish(f"{topic}/x", b"only mine")
    await mine.wait_for(1)
    await theirs.barrier(other, f"{topic}/marker")
    assert [m.payload for m in theirs.messages if m.topic == f"{topic}/x"] == []
    assert alone.connected and alone.supports_response_topic
    await alone.stop()
    await other.stop()
    assert not alone.connected


async def test_hub_keeps_retained_topics_and_wills_of_aborted_clients(topic):
    hub = InprocBroker()
    dev = InprocTransport(hub, client_id="pi-01")
    dev.set_will(Will(f"{topic}/state", b"dead"))
    await dev.start()
    await dev.publish(f"{topic}/state", b"alive", retain=True)
    assert hub.retained_topics == [f"{topic}/state"]
    await dev.abort()
    watcher, inbox = InprocTransport(hub), Inbox()
    await watcher.start()
    await watcher.subscribe(f"{topic}/state", inbox)
    assert (await inbox.wait_for(1))[0].payload == b"dead"
    await watcher.stop()
