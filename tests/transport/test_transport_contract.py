"""The contract every transport keeps: the same tests on inproc and on a real Mosquitto.

A component written against the in-process transport must behave the same
on MQTT, so anything a component can observe is checked here on both.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.errors import TopicInvalid, TransportError
from agent.transport import Message, Will
from tests.transport.inbox import Inbox


async def test_subscriber_receives_what_is_published(make_transport, topic):
    a, b = await make_transport(), await make_transport()
    inbox = Inbox()
    await b.subscribe(f"{topic}/x", inbox)
    await a.publish(f"{topic}/x", b"hello")
    [msg] = await inbox.wait_for(1)
    assert (msg.topic, msg.payload, msg.retain) == (f"{topic}/x", b"hello", False)
    assert a.stats.published == 1 and b.stats.received == 1


async def test_plus_matches_one_level_and_hash_any_rest(make_transport, topic):
    a, b = await make_transport(), await make_transport()
    plus, hash_ = Inbox(), Inbox()
    await b.subscribe(f"{topic}/+/state", plus)
    await b.subscribe(f"{topic}/#", hash_)
    for suffix in ("n1/state", "n1/hb", "n1/state/extra", "n2/state"):
        await a.publish(f"{topic}/{suffix}", suffix.encode(), qos=1)
    await hash_.wait_for(4)
    await plus.barrier(a, f"{topic}/marker/state")
    assert plus.payloads[:2] == [b"n1/state", b"n2/state"]
    assert hash_.payloads[:4] == [b"n1/state", b"n1/hb", b"n1/state/extra", b"n2/state"]


async def test_overlapping_filters_deliver_once_to_each_handler(make_transport, topic):
    a, b = await make_transport(), await make_transport()
    wide, narrow = Inbox(), Inbox()
    await b.subscribe(f"{topic}/#", wide)
    await b.subscribe(f"{topic}/+", narrow)
    await a.publish(f"{topic}/x", b"once", qos=1)
    await wide.barrier(a, f"{topic}/y")
    await narrow.wait_for(3)
    assert [p for p in wide.payloads if p == b"once"] == [b"once"]
    assert [p for p in narrow.payloads if p == b"once"] == [b"once"]


async def test_retained_reaches_late_subscriber_and_empty_retained_clears(make_transport, topic):
    a = await make_transport()
    await a.publish(f"{topic}/policy", b"v1", qos=1, retain=True)
    live = Inbox()
    b = await make_transport()
    await b.subscribe(f"{topic}/policy", live)
    [first] = await live.wait_for(1)
    assert (first.payload, first.retain) == (b"v1", True)

    await a.publish(f"{topic}/policy", b"v2", qos=1, retain=True)
    [_, second] = await live.wait_for(2)
    assert (second.payload, second.retain) == (b"v2", False)  # live copies are not "retained"

    await a.publish(f"{topic}/policy", b"", qos=1, retain=True)
    late = Inbox()
    c = await make_transport()
    await c.subscribe(f"{topic}/#", late)
    assert await late.barrier(a, f"{topic}/marker") == []


async def test_qos1_is_kept_and_downgraded_to_the_subscription_qos(make_transport, topic):
    a, b = await make_transport(), await make_transport()
    q1, q0 = Inbox(), Inbox()
    await b.subscribe(f"{topic}/q1", q1, qos=1)
    await b.subscribe(f"{topic}/q0", q0, qos=0)
    await a.publish(f"{topic}/q1", b"1", qos=1)
    await a.publish(f"{topic}/q0", b"0", qos=1)
    assert (await q1.wait_for(1))[0].qos == 1
    assert (await q0.wait_for(1))[0].qos == 0


async def test_handler_error_is_counted_and_delivery_goes_on(make_transport, topic, caplog):
    a, b = await make_transport(), await make_transport()
    good = Inbox()

    def bad(message: Message) -> None:
        raise RuntimeError("handler bug")

    await b.subscribe(f"{topic}/x", bad)
    await b.subscribe(f"{topic}/x", good)
    await a.publish(f"{topic}/x", b"1", qos=1)
    await a.publish(f"{topic}/x", b"2", qos=1)
    await good.wait_for(2)
    assert good.payloads == [b"1", b"2"]
    assert b.stats.handler_errors == 2
    assert "handler bug" in caplog.text


async def test_cancelled_subscription_gets_nothing_more(make_transport, topic):
    a, b = await make_transport(), await make_transport()
    gone, stays = Inbox(), Inbox()
    sub = await b.subscribe(f"{topic}/x", gone)
    await b.subscribe(f"{topic}/#", stays)
    sub.cancel()
    await a.publish(f"{topic}/x", b"after", qos=1)
    await stays.barrier(a, f"{topic}/marker")
    assert gone.messages == []


async def test_will_is_published_on_abort(make_transport, topic):
    watcher, inbox = await make_transport(), Inbox()
    await watcher.subscribe(f"{topic}/#", inbox)
    dev = await make_transport(start=False)
    dev.set_will(Will(f"{topic}/state", b"dead", qos=1, retain=True))
    await dev.start()
    await dev.wait_connected(5)
    await dev.publish(f"{topic}/state", b"alive", qos=1, retain=True)
    await inbox.wait_for(1)
    await dev.abort()
    [_, will] = await inbox.wait_for(2)
    assert (will.topic, will.payload) == (f"{topic}/state", b"dead")
    assert not dev.connected
    # The will was retained: a newcomer sees the death, not the birth.
    late = Inbox()
    await watcher.subscribe(f"{topic}/state", late)
    assert (await late.wait_for(1))[0].payload == b"dead"


async def test_will_is_not_published_on_stop(make_transport, topic):
    watcher, inbox = await make_transport(), Inbox()
    await watcher.subscribe(f"{topic}/#", inbox)
    dev = await make_transport(start=False)
    dev.set_will(Will(f"{topic}/state", b"dead"))
    await dev.start()
    await dev.wait_connected(5)
    await dev.stop()
    assert not dev.connected
    assert await inbox.barrier(watcher, f"{topic}/marker") == []


async def test_response_topic_and_correlation_data_round_trip(make_transport, topic):
    requester, responder = await make_transport(), await make_transport()
    assert requester.supports_response_topic and responder.supports_response_topic
    requests, replies = Inbox(), Inbox()
    await responder.subscribe(f"{topic}/cmd", requests)
    await requester.subscribe(f"{topic}/reply", replies)
    await requester.publish(f"{topic}/cmd", b"ping", qos=1,
                            response_topic=f"{topic}/reply", correlation_data=b"\x00id-1")
    [req] = await requests.wait_for(1)
    assert (req.response_topic, req.correlation_data) == (f"{topic}/reply", b"\x00id-1")
    await responder.publish(req.response_topic, b"pong", qos=1,
                            correlation_data=req.correlation_data)
    [rep] = await replies.wait_for(1)
    assert (rep.payload, rep.correlation_data, rep.response_topic) == (b"pong", b"\x00id-1", None)


async def test_connection_listener_hears_up_and_down(make_transport):
    t = await make_transport(start=False)
    states: list[bool] = []
    changed = asyncio.Event()

    def listener(state: bool) -> None:
        states.append(state)
        changed.set()

    t.add_connection_listener(listener)
    await t.start()
    await asyncio.wait_for(changed.wait(), 5)
    await t.stop()
    assert states == [True, False]


async def test_subscription_made_before_start_is_live_after_start(make_transport, topic):
    a = await make_transport()
    await a.publish(f"{topic}/r", b"retained", qos=1, retain=True)
    b, inbox = await make_transport(start=False), Inbox()
    await b.subscribe(f"{topic}/#", inbox)
    await b.start()
    await b.wait_connected(5)
    assert (await inbox.wait_for(1))[0].payload == b"retained"
    await a.publish(f"{topic}/live", b"live", qos=1)
    assert (await inbox.wait_for(2))[1].payload == b"live"


async def test_bad_topics_and_arguments_are_refused(make_transport, topic):
    t = await make_transport()
    with pytest.raises(TopicInvalid):
        await t.publish(f"{topic}/+", b"x")
    with pytest.raises(TopicInvalid):
        await t.publish("", b"x")
    with pytest.raises(TopicInvalid):
        await t.subscribe(f"{topic}/#/x", Inbox())
    with pytest.raises(TopicInvalid):
        await t.subscribe(f"{topic}/a+", Inbox())
    with pytest.raises(ValueError, match="qos"):
        await t.publish(f"{topic}/x", b"x", qos=2)
    with pytest.raises(TypeError, match="bytes"):
        await t.publish(f"{topic}/x", "text")  # type: ignore[arg-type]


async def test_publish_after_stop_is_an_error(make_transport, topic):
    t = await make_transport()
    await t.stop()
    with pytest.raises(TransportError, match="not started"):
        await t.publish(f"{topic}/x", b"x")
