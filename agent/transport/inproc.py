"""The in-process transport: a small MQTT-like hub inside this process.

Like gpiozero's ``MockFactory``, this is a real implementation, not a test
fake: the single-device mode (no broker configured) runs on it, and tests use
it to drive components without a network. It keeps the semantics components
can observe on MQTT:

- deliveries happen later on the event loop (``loop.call_soon``), never
  inside ``publish()``, so a handler never runs in the publisher's frame;
- retained messages reach a new subscription (with ``retain=True``), and a
  retained publish with an empty payload clears the topic;
- live deliveries carry ``retain=False`` and ``qos = min(published, granted)``;
- a client's last will is published when it ``abort()``s, not on ``stop()``;
- a message reaches each matching handler once, even when several of the
  client's filters match (as MQTT 5 subscription identifiers give us on the
  broker);
- response topic and correlation data travel with the message.

>>> hub = InprocBroker()
>>> a, b = InprocTransport(hub, client_id="a"), InprocTransport(hub, client_id="b")
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from agent.errors import TransportError
from agent.transport.base import Handler, Message, Subscription, Transport, Will
from agent.transport.checks import check_filter
from agent.wire.topics import matches

log = logging.getLogger(__name__)

class InprocBroker:
    """The hub that :class:`InprocTransport` clients share: routing and retained store.

    One hub per "network". Several transports on one hub see each other's
    messages, which is how tests run a small fleet in one process::

        hub = InprocBroker()
        dev1 = InprocTransport(hub, client_id="pi-01")
        dev2 = InprocTransport(hub, client_id="pi-02")
    """

    def __init__(self) -> None:
        self._retained: dict[str, Message] = {}
        self._clients: list[InprocTransport] = []

    @property
    def retained_topics(self) -> list[str]:
        """Topics that currently hold a retained message (for status and tests)."""
        return list(self._retained)

    def _attach(self, client: InprocTransport) -> None:
        if client not in self._clients:
            self._clients.append(client)

    def _detach(self, client: InprocTransport, will: Will | None) -> None:
        if client in self._clients:
            self._clients.remove(client)
        if will is not None:
            self._route(
                Message(will.topic, bytes(will.payload), qos=will.qos, retain=will.retain)
            )

    def _route(self, message: Message) -> None:
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        live = replace(message, retain=False) if message.retain else message
        for client in list(self._clients):
            client._offer(live)

    def _retained_matching(self, topic_filter: str) -> list[Message]:
        return [m for topic, m in self._retained.items() if matches(topic_filter, topic)]


class InprocTransport(Transport):
    """A :class:`Transport` on an :class:`InprocBroker` (its own private one by default).

    With no ``broker`` it makes a private hub: the single-device mode, where
    a device's components still talk through topics but nothing leaves the
    process::

        async with InprocTransport() as transport:
            await transport.subscribe("igris/lab/#", print)
            await transport.publish("igris/lab/policy", b"{}", retain=True)

    Use one event loop per process (deliveries are scheduled on the loop the
    receiving transport was started on).
    """

    def __init__(self, broker: InprocBroker | None = None, *, client_id: str | None = None):
        super().__init__()
        self.broker = broker if broker is not None else InprocBroker()
        self.client_id = client_id or f"inproc-{id(self):x}"
        self._subs: dict[Subscription, int] = {}
        self._will: Will | None = None
        self._active_will: Will | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"<InprocTransport {self.client_id}{'' if self._running else ' stopped'}>"

    @property
    def connected(self) -> bool:
        return self._running

    @property
    def supports_response_topic(self) -> bool:
        return True

    def set_will(self, will: Will | None) -> None:
        # Like MQTT, the will is fixed when the client connects.
        self._will = will

    async def start(self) -> None:
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._active_will = self._will
        self.broker._attach(self)
        # Subscriptions made before start() behave as if made on connect.
        for sub in list(self._subs):
            self._send_retained(sub)
        self._loop.call_soon(self._announce)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return at once once started (there is no connection to wait for)."""
        if not self._running:
            raise TransportError(f"{self!r} is not started; call 'await transport.start()'")

    async def stop(self) -> None:
        self._close(will=None)

    async def abort(self) -> None:
        self._close(will=self._active_will)

    def _close(self, will: Will | None) -> None:
        if not self._running:
            return
        self._running = False
        self.broker._detach(self, will)
        self._announce()

    def _publish(self, message: Message) -> None:
        self.stats.published += 1
        self.broker._route(message)

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> Subscription:
        check_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        sub = Subscription(topic_filter, handler, self._cancel)
        self._subs[sub] = qos
        if self._running:
            self._send_retained(sub)
        return sub

    def _cancel(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)

    def _send_retained(self, sub: Subscription) -> None:
        assert self._loop is not None
        for message in self.broker._retained_matching(sub.filter):
            self._loop.call_soon(self._deliver_retained, sub, message)

    def _deliver_retained(self, sub: Subscription, message: Message) -> None:
        granted = self._subs.get(sub)
        if granted is None or not self._running:
            return
        self._dispatch([sub.handler], replace(message, qos=min(message.qos, granted)))

    def _offer(self, message: Message) -> None:
        """Called by the hub inside a publish: schedule, never deliver inline."""
        if self._running and self._loop is not None and self._matching(message.topic):
            self._loop.call_soon(self._deliver, message)

    def _deliver(self, message: Message) -> None:
        if not self._running:
            return
        subs = self._matching(message.topic)
        if not subs:
            return
        granted = max(self._subs[s] for s in subs)
        if granted < message.qos:
            message = replace(message, qos=granted)
        self._dispatch([s.handler for s in subs], message)

    def _matching(self, topic: str) -> list[Subscription]:
        return [s for s in self._subs if matches(s.filter, topic)]
