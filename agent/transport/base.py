"""The one small interface every transport offers (in-process or MQTT).

Components publish and subscribe through :class:`Transport` and never see
paho: its callbacks, threads and return codes stop inside
:mod:`agent.transport.mqtt`. Handlers are plain callables run on the event
loop; a handler that must wait schedules its own task.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.errors import TransportError
from agent.transport.checks import check_publish_args, check_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as delivered to a subscriber."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes if this client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


Handler = Callable[[Message], None]
ConnectionListener = Callable[[bool], None]


@dataclass(slots=True)
class TransportStats:
    """Counters a transport keeps; shown by ``igris status``."""

    published: int = 0
    received: int = 0
    queued_offline: int = 0
    dropped_offline: int = 0
    handler_errors: int = 0
    reconnects: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Subscription:
    """A live subscription; :meth:`cancel` stops delivery to its handler."""

    __slots__ = ("_cancel", "filter", "handler")

    def __init__(self, topic_filter: str, handler: Handler, cancel: Callable[[Subscription], None]):
        self.filter = topic_filter
        self.handler = handler
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel(self)


class Transport(abc.ABC):
    """Publish/subscribe with ``+``/``#`` filters, retained messages, QoS 0/1
    and a last will, plus the connection state.

    Use it as ``await t.start()`` ... ``await t.stop()`` (or ``async with``).
    ``stop()`` is a graceful disconnect: the will is *not* sent, so callers
    publish their own death first. ``abort()`` drops the connection the way a
    crash would, and the broker sends the will.
    """

    def __init__(self) -> None:
        self.stats = TransportStats()
        self._listeners: list[ConnectionListener] = []
        self._announced = False
        self._running = False  # between start() and stop()/abort()

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while messages can reach the broker (always, in-process)."""

    @property
    def supports_response_topic(self) -> bool:
        """True when replies can use MQTT 5 response topic and correlation data."""
        return False

    @abc.abstractmethod
    def set_will(self, will: Will | None) -> None:
        """Set the last will used from the next connection on."""

    @abc.abstractmethod
    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until :attr:`connected`; BrokerUnavailable after ``timeout`` seconds."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect (or begin connecting) and start delivering messages."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush what can be flushed and disconnect cleanly (no will)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop the connection without a clean disconnect (the will fires)."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish; while offline, QoS 1 and retained messages wait in a bounded queue."""
        self.publish_nowait(topic, payload, qos=qos, retain=retain,
                            response_topic=response_topic, correlation_data=correlation_data)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """:meth:`publish` from synchronous code (a message handler): it never waits, the
        packet goes out with the loop's next write."""
        check_topic(topic)
        data = check_publish_args(payload, qos)
        if response_topic is not None:
            check_topic(response_topic)
        if not self._running:
            raise TransportError(
                f"publish to {topic!r} on {self!r}, which is not started;"
                " call 'await transport.start()'"
            )
        self._publish(Message(
            topic, data, qos=qos, retain=retain, response_topic=response_topic,
            correlation_data=None if correlation_data is None else bytes(correlation_data),
        ))

    @abc.abstractmethod
    def _publish(self, message: Message) -> None:
        """Send (or queue) a checked message; runs on the loop."""

    @abc.abstractmethod
    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> Subscription:
        """Deliver every message matching ``topic_filter`` to ``handler``.

        May be called before :meth:`start`. Retained messages may be delivered
        again on a re-subscribe or a reconnect (at least once).
        """

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Call ``listener(connected)`` on the loop whenever the state changes."""
        self._listeners.append(listener)

    def _announce(self) -> None:
        """Tell listeners about a change. Reads the state now, so a call
        scheduled late never announces a state that has already passed."""
        state = self.connected
        if state != self._announced:
            self._announced = state
            self._notify_connection(state)

    def _notify_connection(self, connected: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(connected)
            except Exception:
                log.exception("connection listener %r failed", listener)

    def _dispatch(self, handlers: Sequence[Handler], message: Message) -> None:
        """Run each handler; one that raises is logged and counted, never fatal."""
        self.stats.received += 1
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("handler %r failed on %s", handler, message.topic)

    async def __aenter__(self) -> Transport:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
