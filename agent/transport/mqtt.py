"""The MQTT transport: paho-mqtt 2.x driven from the asyncio loop.

paho runs without its own network thread, the way Home Assistant's MQTT
client does it: paho tells us when its socket opens, closes and wants to
write, and we hand the socket to ``loop.add_reader``/``add_writer`` which call
``loop_read``/``loop_write``; a task calls ``loop_misc`` once a second for
keepalive. Only the blocking ``connect()`` (DNS, TCP, TLS handshake) runs in
an executor, and while it does the loop leaves the paho client alone; of
the callbacks paho makes from that worker we act only on ``on_socket_open``
(to set TCP_NODELAY on the new socket). Every other callback runs on the
loop thread, and message handlers are called directly from there.

What this adds over bare paho, because a Pi on a flaky link needs it:

- reconnect forever with exponential backoff and full jitter, so a fleet
  that lost its broker does not come back all at once;
- a persistent session (client id = device id) and a resubscribe on every
  connect, so commands queued by the broker are not lost and a broker that
  forgot us still routes to us;
- a bounded queue for QoS 1 and retained publishes made while offline,
  flushed in order on reconnect (oldest dropped and counted on overflow);
- MQTT 5 (response topic, correlation data, subscription identifiers so a
  message matching two of our filters reaches each handler once), falling
  back to 3.1.1 when the broker refuses 5;
- TCP_NODELAY: without it a QoS 1 request/response round trip stalls on
  Nagle plus delayed ACK (about 88 ms instead of 0.5 ms on loopback).

paho's callbacks, return codes and exceptions stop in this module; callers
see :class:`agent.errors.BrokerUnavailable` and :class:`TransportError`.

>>> settings = MqttSettings.from_url("mqtts://broker.lan:8883", client_id="pi-01",
...     ca_file="ca.pem", cert_file="pi-01.pem", key_file="pi-01.key")
>>> transport = MqttTransport(settings)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import select
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.errors import BrokerUnavailable, TransportError
from agent.transport.base import Handler, Message, Subscription, Transport, Will
from agent.transport.checks import check_filter
from agent.transport.mqtt_settings import MqttSettings, backoff_delay, make_ssl_context
from agent.wire.topics import matches

log = logging.getLogger(__name__)

_MISC_INTERVAL_S = 1.0
_FLUSH_CHUNK = 100
_UNSUPPORTED_PROTOCOL = 0x84
_MAX_SUBSCRIPTION_ID = 268_435_455
_RESPONSE_TOPIC = 0x08  # MQTT 5 property identifiers
_CORRELATION_DATA = 0x09
_READ_BURST = 32  # packets read per wake-up at most
_JOIN_MAX_BYTES = 64 * 1024  # queued packets joined into one send() up to this size
_PUBLISH, _DISCONNECT = 0x30, 0xE0  # MQTT packet types (high nibble of the first byte)


class _PahoLog:
    """paho's log lines, less its ERROR for every dropped connection.

    A lost connection is normal on a flaky link and this module reports it
    itself, once, as a WARNING; paho's "failed to receive on socket" goes to
    DEBUG. Everything else (an exception caught in a callback is a bug) keeps
    its level. paho formats lazily through this, so it costs nothing unlogged.
    """

    _ROUTINE = ("failed to receive on socket", "timeout on socket")

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def log(self, level: int, fmt: str, *args: object) -> None:
        if level > logging.DEBUG and fmt.startswith(self._ROUTINE):
            level = logging.DEBUG
        self._logger.log(level, fmt, *args)


class _PublishProperties:
    """A PUBLISH's response topic and correlation data, encoded once for paho.

    paho only ever calls ``pack()`` on an outgoing message's properties (when
    it sends it, and again if it resends it). Its own ``Properties`` object
    costs more to build than the rest of a publish (a reply is one per
    command), because every attribute set searches its table of names.
    """

    __slots__ = ("_packed",)

    def __init__(self, response_topic: str | None, correlation_data: bytes | None):
        body = b""
        if response_topic:
            body += _string_property(_RESPONSE_TOPIC, response_topic.encode("utf-8"))
        if correlation_data is not None:
            body += _string_property(_CORRELATION_DATA, correlation_data)
        self._packed = _varint(len(body)) + body

    def pack(self) -> bytes:
        return self._packed


def _string_property(ident: int, data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"an MQTT property holds at most 65535 bytes, got {len(data)}")
    return bytes((ident,)) + len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _join_queued_packets(client: paho.Client) -> None:
    """Join the packets paho has queued so that one ``send()`` writes several.

    paho writes each queued packet with its own ``send()``: a device answering
    a request writes its PUBACK and its reply, a caller the PUBACKs of a burst
    of replies, each a system call and a TCP segment of its own (for the
    broker too). A packet that needs nothing done once it is written (every
    kind but a QoS 0 PUBLISH, whose ``on_publish`` fires then, and a
    DISCONNECT) is joined to the one after it, which carries the bytes and
    keeps its own bookkeeping; paho's partial writes go on as before.
    ``_out_packet`` is paho's own queue (a deque of dicts): a paho whose
    queue looks otherwise is left alone.
    """
    queue = getattr(client, "_out_packet", None)
    if queue is None or len(queue) < 2:
        return
    try:
        joined = _joined(queue)
    except (KeyError, TypeError):
        return
    queue.clear()
    queue.extend(joined)


def _joined(packets: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[bytes] = []  # quiet packets waiting for the one that carries them
    size = 0
    carrier: dict[str, Any] = {}
    for packet in packets:
        if packet["pos"]:  # partly written already (only the head can be): as it is
            out.append(packet)
            continue
        parts.append(packet["packet"])
        size += len(packet["packet"])
        kind = packet["command"] & 0xF0
        if (kind == _PUBLISH and packet["qos"] == 0) or kind == _DISCONNECT \
                or size >= _JOIN_MAX_BYTES:
            out.append(_carrying(packet, parts))
            parts, size = [], 0
        else:
            carrier = packet
    if parts:
        out.append(_carrying(carrier, parts))
    return out


def _carrying(packet: dict[str, Any], parts: list[bytes]) -> dict[str, Any]:
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return {**packet, "packet": data, "to_process": len(data)}


class _Outcome(enum.Enum):
    CONNECTED = "connected"
    FAILED = "failed"
    RETRY_NOW = "retry now"


@dataclass(slots=True)
class _Filter:
    """One broker-side subscription and the local handlers behind it."""

    sub_id: int
    handlers: dict[Subscription, int] = field(default_factory=dict)
    callbacks: tuple[Handler, ...] = ()  # the handlers' callables, what a delivery runs

    @property
    def qos(self) -> int:
        return max(self.handlers.values(), default=0)

    def set(self, sub: Subscription, qos: int | None) -> bool:
        """Add ``sub`` (with ``qos``) or, with None, remove it; False if it was not here."""
        if qos is not None:
            self.handlers[sub] = qos
        elif self.handlers.pop(sub, None) is None:
            return False
        self.callbacks = tuple(s.handler for s in self.handlers)
        return True


class MqttTransport(Transport):
    """A :class:`Transport` over an MQTT broker (paho-mqtt, no extra thread).

    ``start()`` returns at once; the connection is made (and remade) in the
    background. Use :attr:`connected`, a connection listener or
    :meth:`wait_connected` to know when the broker is reachable::

        transport = MqttTransport(MqttSettings.from_url(url, client_id="pi-01"))
        await transport.subscribe("igris/lab/cmd/pi-01", on_command)  # before start: fine
        await transport.start()
        await transport.wait_connected(timeout=10)

    ``rand`` is the jitter source (``random.random``), injectable for tests.
    Counters are in :attr:`stats`: ``reconnects`` counts successful
    reconnections, ``extra["reconnect_attempt"]`` the failed attempts since
    the last success.
    """

    def __init__(self, settings: MqttSettings, *, rand: Callable[[], float] = random.random):
        super().__init__()
        self.settings = settings
        self.last_error: BrokerUnavailable | None = None
        self._rand = rand
        self._protocol = settings.protocol
        self._will: Will | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._client: paho.Client | None = None
        self._sock: Any = None
        self._writer_on = False
        self._flush_due = False
        self._reading = False  # in _on_readable: it writes what the burst queued at its end
        self._connected = False
        self._ever_connected = False
        self._supervisor: asyncio.Task[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._dying: set[asyncio.Task[None]] = set()
        self._connack: asyncio.Future[tuple[int, str]] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._sock_closed: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        self._drained = asyncio.Event()
        self._filters: dict[str, _Filter] = {}
        self._by_sub_id: dict[int, str] = {}
        self._unsub_later: set[str] = set()
        self._suback: dict[int, asyncio.Future[list[int] | None]] = {}
        self._offline: deque[Message] = deque()
        self._inflight: set[int] = set()
        for key in ("reconnect_attempt", "connect_failures", "offline_queue_depth",
                    "publish_refused", "unrouted"):
            self.stats.extra[key] = 0

    def __repr__(self) -> str:
        s = self.settings
        state = "connected" if self._connected else "running" if self._running else "stopped"
        return f"<MqttTransport {s.client_id}@{s.host}:{s.port} mqtt{self._protocol} {state}>"

    # -- state ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def supports_response_topic(self) -> bool:
        return self._protocol == "5"

    @property
    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def protocol(self) -> str:
        """The MQTT version in use: ``"5"``, or ``"3.1.1"`` after a fallback or when forced."""
        return self._protocol

    def set_will(self, will: Will | None) -> None:
        self._will = will

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected; :class:`BrokerUnavailable` after ``timeout`` seconds."""
        if not self._running:
            raise TransportError(f"{self!r} is not started; call 'await transport.start()'")
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError as exc:
            raise BrokerUnavailable(
                f"no connection to MQTT broker {self._where} after {timeout}s"
                f" (last error: {self.last_error})"
            ) from exc

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        if self.settings.tls and self._ssl_context is None:
            self._ssl_context = await loop.run_in_executor(None, make_ssl_context, self.settings)
        self._up = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._inflight.clear()
        self._ever_connected = False
        self._client = self._make_client()
        self._running = True
        self._supervisor = loop.create_task(
            self._supervise(), name=f"igris.mqtt.reconnect[{self.settings.client_id}]"
        )

    async def stop(self) -> None:
        """Wait for in-flight QoS 1 acks, send DISCONNECT, close: no will.

        All the waiting together is bounded by ``settings.stop_timeout_s``.
        """
        if not self._running:
            return
        self._running = False
        await self._cancel_supervisor()
        deadline = time.monotonic() + self.settings.stop_timeout_s

        def left() -> float:
            return max(0.05, deadline - time.monotonic())

        connack = self._connack
        if self._sock is not None and connack is not None and not connack.done():
            # Our CONNECT is out: closing now would look like a crash to the
            # broker, which would publish the will. Let the handshake finish.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(connack), left())
        client = self._client
        if client is not None and self._connected:
            self._flush_offline(everything=True)
            try:
                await asyncio.wait_for(self._drained.wait(), left())
            except asyncio.TimeoutError:
                log.warning("%r: stopping with %d QoS 1 messages unacknowledged",
                            self, len(self._inflight))
            closed = self._sock_closed
            if self._connected and closed is not None:
                client.disconnect()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), left())
        self._release()
        await self._reap()

    async def abort(self) -> None:
        """Close the socket without DISCONNECT, as a crash would: the broker sends the will.

        Unsent and unacknowledged messages are lost, as in a crash.
        """
        if not self._running:
            return
        self._running = False
        await self._cancel_supervisor()
        self._release()
        await self._reap()

    async def _reap(self) -> None:
        """Wait for cancelled background tasks, so none outlives stop()."""
        if self._dying:
            await asyncio.gather(*self._dying, return_exceptions=True)

    async def _cancel_supervisor(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _release(self) -> None:
        """Drop the client and its socket; count what is lost; announce the state."""
        client, self._client = self._client, None
        self._unwatch_socket()
        if client is not None:
            self._discard_client(client)
        lost = len(self._offline) + len(self._inflight)
        if lost:
            log.warning("%r: %d unsent or unacknowledged messages dropped", self, lost)
            self.stats.dropped_offline += lost
        self._offline.clear()
        self._inflight.clear()
        self.stats.extra["offline_queue_depth"] = 0
        self._fail_subacks()
        self._connected = False
        self._up.clear()
        self._announce()

    # -- connection supervision ----------------------------------------------

    async def _supervise(self) -> None:
        """Connect, wait for the loss, back off with full jitter, and again, until cancelled."""
        attempt = 0
        while True:
            try:
                outcome = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave the device offline for good
                log.exception("%r: unexpected error while connecting", self)
                outcome = _Outcome.FAILED
            if outcome is _Outcome.RETRY_NOW:
                continue
            if outcome is _Outcome.CONNECTED:
                attempt = 0
                self.stats.extra["reconnect_attempt"] = 0
                assert self._lost is not None
                await self._lost
            else:
                self.stats.extra["connect_failures"] += 1
                self.stats.extra["reconnect_attempt"] = attempt + 1
            delay = backoff_delay(attempt, base=self.settings.backoff_base_s,
                                  cap=self.settings.backoff_cap_s, rand=self._rand)
            attempt += 1
            log.debug("%r: reconnect attempt %d in %.2fs", self, attempt, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> _Outcome:
        loop = self._loop
        client = self._client
        assert loop is not None and client is not None
        self._abandon_socket()
        self._apply_will(client)
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        work = loop.run_in_executor(None, self._blocking_connect, client)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # The worker cannot be interrupted: close whatever it opens.
            work.add_done_callback(lambda f: self._after_abandoned_connect(f, client))
            raise
        except BrokerUnavailable as exc:
            self._connect_failed(exc)
            return _Outcome.FAILED
        sock = client.socket()
        if sock is None:
            self._connect_failed(BrokerUnavailable("the MQTT connection closed while opening"))
            return _Outcome.FAILED
        self._watch_socket(client, sock)
        try:
            reason = await asyncio.wait_for(
                asyncio.shield(self._connack), self.settings.connect_timeout_s)
        except asyncio.TimeoutError:
            self._abandon_socket()
            self._connect_failed(BrokerUnavailable(
                f"MQTT broker {self._where} sent no CONNACK within"
                f" {self.settings.connect_timeout_s}s"))
            return _Outcome.FAILED
        code, text = reason
        if code == 0:
            return _Outcome.CONNECTED
        if code == _UNSUPPORTED_PROTOCOL and self._protocol == "5":
            self._fall_back_to_311()
            return _Outcome.RETRY_NOW
        self._connect_failed(BrokerUnavailable(
            f"MQTT broker {self._where} refused the connection: {text} ({code})"))
        return _Outcome.FAILED

    def _blocking_connect(self, client: paho.Client) -> None:
        """Runs in a worker thread: DNS, TCP, TLS handshake, CONNECT queued."""
        s = self.settings
        try:
            if self._protocol == "5":
                props = None
                if s.session_expiry_s:
                    props = Properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = s.session_expiry_s
                rc = client.connect(s.host, s.port, s.keepalive,
                                    clean_start=s.session_expiry_s == 0, properties=props)
            else:
                rc = client.connect(s.host, s.port, s.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot reach MQTT broker {self._where}: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(
                f"cannot reach MQTT broker {self._where}: {paho.error_string(rc)}")

    def _connect_failed(self, exc: BrokerUnavailable) -> None:
        # Loud once per outage, quiet while it lasts: a Pi's log is small.
        first = self.last_error is None
        self.last_error = exc
        log.log(logging.WARNING if first else logging.DEBUG, "%r: %s", self, exc)

    def _fall_back_to_311(self) -> None:
        log.warning("%r: broker refuses MQTT 5, falling back to 3.1.1 (no response topic"
                    " or correlation data from now on)", self)
        old = self._client
        self._protocol = "3.1.1"
        self._client = self._make_client()
        if old is not None:
            # Messages paho still holds for retransmission go first on the new client.
            for m in reversed(old.drop_out_messages()):
                self._offline.appendleft(
                    Message(m.topic, bytes(m.payload), qos=m.qos, retain=m.retain)
                )
                self._inflight.discard(m.mid)
            self._discard_client(old)
        self._note_drained()
        self.stats.extra["offline_queue_depth"] = len(self._offline)

    def _make_client(self) -> paho.Client:
        s = self.settings
        if self._protocol == "5":
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                                 protocol=paho.MQTTv5, reconnect_on_failure=False)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                                 protocol=paho.MQTTv311, reconnect_on_failure=False,
                                 clean_session=s.session_expiry_s == 0)
        client.connect_timeout = s.connect_timeout_s
        # Our callbacks catch their own errors; paho must never raise out of loop_read.
        client.suppress_exceptions = True
        client.logger = _PahoLog(logging.getLogger(__name__ + ".paho"))  # type: ignore[assignment]
        if self._ssl_context is not None:
            client.tls_set_context(self._ssl_context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _apply_will(self, client: paho.Client) -> None:
        if self._will is None:
            client.will_clear()
        else:
            w = self._will
            client.will_set(w.topic, bytes(w.payload), qos=w.qos, retain=w.retain)

    @staticmethod
    def _discard_client(client: paho.Client) -> None:
        """Close a client's socket without DISCONNECT and detach our callbacks."""
        for name in ("on_connect", "on_disconnect", "on_message", "on_publish", "on_subscribe",
                     "on_unsubscribe", "on_socket_open", "on_socket_close",
                     "on_socket_register_write", "on_socket_unregister_write"):
            setattr(client, name, None)
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _after_abandoned_connect(self, work: asyncio.Future[None], client: paho.Client) -> None:
        if not work.cancelled() and work.exception() is not None:
            log.debug("%r: abandoned connect attempt failed: %s", self, work.exception())
        self._discard_client(client)

    def _abandon_socket(self) -> None:
        """Unregister and close the socket ourselves (paho is not told; it reconnects afresh).

        Done on the loop thread before the next connect: if paho closed it in
        the worker instead, the selector would keep a stale file descriptor.
        """
        sock = self._sock
        if sock is not None:
            self._unwatch_socket()
            with contextlib.suppress(OSError):
                sock.close()

    # -- socket <-> event loop -----------------------------------------------

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _watch_socket(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._writer_on = False
        self._sock_closed = self._loop.create_future()
        self._loop.add_reader(sock, self._on_readable, client)
        if client.want_write():
            self._on_writable(client)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(
                self._misc_loop(client), name=f"igris.mqtt.misc[{self.settings.client_id}]")

    def _unwatch_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                if self._writer_on:
                    self._loop.remove_writer(sock)
        self._writer_on = False
        if self._sock_closed is not None and not self._sock_closed.done():
            self._sock_closed.set_result(None)
        misc, self._misc = self._misc, None
        if misc is not None and not misc.done():
            misc.cancel()
            self._dying.add(misc)
            misc.add_done_callback(self._dying.discard)

    def _on_readable(self, client: paho.Client) -> None:
        # paho reads at most as many packets per call as it has QoS>0 messages in
        # flight (one when it has none, as a caller waiting for a fan-out's replies
        # does): keep reading while the socket has more, so a burst takes one wake-up
        # rather than a loop turn per packet, up to a bound so a busy socket cannot
        # starve the loop. TLS may hold decrypted bytes the kernel no longer reports
        # as readable. What the burst queued (replies, PUBACKs) is written at its
        # end, before the loop runs anything else: a process with many
        # connections (a gateway, a bench) would otherwise hold every reply until
        # all its sockets were read.
        self._reading = True
        try:
            for _ in range(_READ_BURST):
                client.loop_read()
                sock = client.socket()
                if sock is None or sock is not self._sock:
                    return
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) \
                        and not select.select((sock,), (), (), 0)[0]:
                    return
        finally:
            self._reading = False
            if self._flush_due:
                self._flush_writes()

    def _on_writable(self, client: paho.Client) -> None:
        _join_queued_packets(client)
        client.loop_write()

    def _flush_writes(self) -> None:
        # paho asks once until its queue is empty: whatever socket is current now
        # must be written (the one that asked may have been replaced meanwhile).
        self._flush_due = False
        client, sock = self._client, self._sock
        if client is None or sock is None or self._writer_on:
            return  # no connection, or the selector already waits to write
        _join_queued_packets(client)
        client.loop_write()
        if client.want_write() and sock is self._sock and not self._writer_on:
            assert self._loop is not None
            self._loop.add_writer(sock, self._on_writable, client)
            self._writer_on = True

    async def _misc_loop(self, client: paho.Client) -> None:
        """Keepalive pings and ping timeouts: paho's only timer-driven work."""
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if client.socket() is None:
                return
            client.loop_misc()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Runs in the connect worker: touch only the socket. Nagle plus the
        # broker's delayed ACK would add tens of ms to every small publish.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("%r: cannot set TCP_NODELAY: %s", self, exc)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho calls this before it closes the fd: unregister while it is valid.
        if self._on_loop_thread() and sock is self._sock:
            self._unwatch_socket()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # From the connect worker we ignore it: _watch_socket flushes after connect().
        # On the loop, everything queued in this turn (replies, PUBACKs) is written
        # at the start of the next one (or at the end of the read burst that queued
        # it), straight to the socket: a writer registered and removed with the
        # selector for each packet cost more than the write. Only a full socket
        # buffer gets a writer (see _flush_writes).
        if self._on_loop_thread() and sock is self._sock and not self._writer_on \
                and not self._flush_due:
            self._flush_due = True
            if not self._reading:
                assert self._loop is not None
                self._loop.call_soon(self._flush_writes)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._on_loop_thread() and sock is self._sock and self._writer_on:
            assert self._loop is not None
            self._loop.remove_writer(sock)
            self._writer_on = False

    # -- paho protocol callbacks (all on the loop thread) --------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if client is not self._client:
            return
        code = int(reason.value)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((code, str(reason)))
        if code != 0:
            return
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        log.info("%r: connected (session present: %s)", self, bool(flags.session_present))
        if self.last_error is not None:
            log.warning("%r: connected again after: %s", self, self.last_error)
        self.last_error = None
        self._connected = True
        self._up.set()
        for topic_filter in self._unsub_later:
            self._send_unsubscribe(topic_filter)
        self._unsub_later.clear()
        for topic_filter in self._filters:
            self._send_subscribe(topic_filter)
        assert self._loop is not None
        # After paho has re-sent its own unacknowledged messages (it does so
        # right after this callback), so the wire order stays the publish order.
        self._loop.call_soon(self._flush_offline)
        self._loop.call_soon(self._announce)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if client is not self._client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((0x80, f"connection closed before CONNACK ({reason})"))
        was_connected = self._connected
        self._connected = False
        self._up.clear()
        self._fail_subacks()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if was_connected:
            if self._running:
                self.last_error = BrokerUnavailable(
                    f"lost the connection to MQTT broker {self._where}: {reason}")
                log.warning("%r: %s", self, self.last_error)
            assert self._loop is not None
            self._loop.call_soon(self._announce)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if client is not self._client:
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.stats.extra["unrouted"] += 1
            log.warning("%r: dropped a message whose topic is not UTF-8", self)
            return
        props = msg.properties if self._protocol == "5" else None
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        message = Message(
            topic, bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
            response_topic=response_topic,
            correlation_data=None if correlation is None else bytes(correlation),
        )
        handlers = self._handlers_for(topic, getattr(props, "SubscriptionIdentifier", None))
        if not handlers:
            self.stats.extra["unrouted"] += 1
            log.debug("%r: no handler for %s", self, topic)
            return
        self._dispatch(handlers, message)

    def _handlers_for(self, topic: str, sub_ids: list[int] | None) -> Sequence[Handler]:
        """Handlers for one delivered copy.

        On MQTT 5 the broker sends a copy per matching subscription, tagged
        with its identifier: each copy goes to that filter's handlers only,
        so every handler sees a message once. Copies for identifiers we do
        not know (a subscription left in the persistent session by an older
        run) are dropped. Without identifiers (3.1.1) the broker sends one
        copy and every matching handler gets it.
        """
        if sub_ids:
            handlers: list[Handler] = []
            for sub_id in sub_ids:
                topic_filter = self._by_sub_id.get(sub_id)
                if topic_filter is not None and (topic_filter == topic
                                                 or matches(topic_filter, topic)):
                    if len(sub_ids) == 1:  # the usual case: no list to build
                        return self._filters[topic_filter].callbacks
                    handlers.extend(self._filters[topic_filter].callbacks)
            return handlers
        return [h for f, entry in self._filters.items() if matches(f, topic)
                for h in entry.callbacks]

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        if client is not self._client:
            return
        if mid in self._inflight:
            self._inflight.discard(mid)
            if reason.is_failure:
                self.stats.extra["publish_refused"] += 1
                log.warning("%r: broker refused a publish: %s (ACL?)", self, reason)
            self._note_drained()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        codes = [int(r.value) for r in reasons]
        if any(code >= 0x80 for code in codes):
            log.warning("%r: broker refused a subscription (reasons %s; ACL?)", self, codes)
        waiter = self._suback.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def _send_unsubscribe(self, topic_filter: str) -> None:
        # Counted in flight like a QoS 1 publish: stop() waits for the UNSUBACK,
        # because a DISCONNECT sent with acks still on the way makes the socket
        # close with unread data, which the broker sees as a crash (and sends the will).
        assert self._client is not None
        rc, mid = self._client.unsubscribe(topic_filter)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._inflight.add(mid)
            self._drained.clear()

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                        properties: Any) -> None:
        if client is self._client and mid in self._inflight:
            self._inflight.discard(mid)
            self._note_drained()

    def _note_drained(self) -> None:
        if self._inflight:
            self._drained.clear()
        else:
            self._drained.set()

    def _fail_subacks(self) -> None:
        # The subscription stays registered and is resent on the next connect.
        waiters, self._suback = self._suback, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_result(None)


    # -- publish -------------------------------------------------------------

    def _publish(self, message: Message) -> None:
        if self._connected and not self._offline:
            self._send(message)
        elif self._connected or message.qos or message.retain:
            self._enqueue(message)  # behind older queued messages, to keep the order
        else:
            self.stats.dropped_offline += 1
            log.debug("%r: offline, dropped QoS 0 publish to %s", self, message.topic)

    def _enqueue(self, out: Message) -> None:
        limit = self.settings.max_offline_queue
        if limit == 0:
            self.stats.dropped_offline += 1
            return
        if len(self._offline) >= limit:
            dropped = self._offline.popleft()
            self.stats.dropped_offline += 1
            log.log(logging.WARNING if self.stats.dropped_offline == 1 else logging.DEBUG,
                    "%r: offline queue full (%d), dropped the oldest message (to %s)",
                    self, limit, dropped.topic)
        self._offline.append(out)
        self.stats.queued_offline += 1
        self.stats.extra["offline_queue_depth"] = len(self._offline)

    def _flush_offline(self, everything: bool = False) -> None:
        """Hand queued messages to paho in order, a chunk per loop turn."""
        budget = len(self._offline) if everything else _FLUSH_CHUNK
        while budget > 0 and self._connected and self._offline:
            budget -= 1
            out = self._offline.popleft()
            try:
                self._send(out)
            except TransportError:
                self.stats.dropped_offline += 1
                log.exception("%r: dropped a queued message to %s", self, out.topic)
        self.stats.extra["offline_queue_depth"] = len(self._offline)
        if self._connected and self._offline and self._loop is not None:
            self._loop.call_soon(self._flush_offline)

    def _send(self, out: Message) -> None:
        client = self._client
        assert client is not None
        props = None
        if self._protocol == "5" and (out.response_topic or out.correlation_data is not None):
            props = _PublishProperties(out.response_topic, out.correlation_data)
        try:
            info = client.publish(out.topic, out.payload, out.qos, out.retain, properties=props)
        except ValueError as exc:
            raise TransportError(f"cannot publish to {out.topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and out.qos):
            # NO_CONN with QoS 1: paho keeps it and sends it on the next connect.
            self.stats.published += 1
            if out.qos:
                self._inflight.add(info.mid)
                self._drained.clear()
        elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            self.stats.dropped_offline += 1
        else:
            raise TransportError(
                f"publish to {out.topic!r} failed: {paho.error_string(info.rc)}")

    # -- subscribe -----------------------------------------------------------

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> Subscription:
        """Register ``handler``; when connected, wait for the broker's SUBACK.

        May be called before :meth:`start`: the filter is then subscribed on
        connect, before any message queued in the persistent session arrives.
        A handler may see a retained message again when another handler
        subscribes to the same filter (MQTT re-sends retained on SUBSCRIBE).
        """
        check_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        sub = Subscription(topic_filter, handler, self._cancel)
        entry = self._filters.get(topic_filter)
        if entry is None:
            entry = self._filters[topic_filter] = _Filter(self._claim_sub_id(topic_filter))
        entry.set(sub, qos)
        self._unsub_later.discard(topic_filter)
        if self._connected:
            codes = None
            waiter = self._send_subscribe(topic_filter)
            if waiter is not None:
                try:
                    codes = await asyncio.wait_for(waiter, self.settings.connect_timeout_s)
                except asyncio.TimeoutError:
                    # Registered all the same: it is sent again on every connect.
                    log.warning("%r: no SUBACK for %r within %ss", self, topic_filter,
                                self.settings.connect_timeout_s)
            if codes is not None and any(code >= 0x80 for code in codes):
                self._cancel(sub)
                raise TransportError(
                    f"broker refused the subscription to {topic_filter!r} (reason {codes}; ACL?)")
        return sub

    def _claim_sub_id(self, topic_filter: str) -> int:
        # Derived from the filter, so a later run of this device maps the
        # subscriptions its persistent session still holds to the same ids.
        sub_id = zlib.crc32(topic_filter.encode("utf-8")) % _MAX_SUBSCRIPTION_ID + 1
        while self._by_sub_id.get(sub_id, topic_filter) != topic_filter:
            sub_id = sub_id % _MAX_SUBSCRIPTION_ID + 1
        self._by_sub_id[sub_id] = topic_filter
        return sub_id

    def _send_subscribe(self, topic_filter: str) -> asyncio.Future[list[int] | None] | None:
        client, entry = self._client, self._filters[topic_filter]
        assert client is not None and self._loop is not None
        if self._protocol == "5":
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = entry.sub_id
            rc, mid = client.subscribe(
                topic_filter, options=SubscribeOptions(qos=entry.qos), properties=props)
        else:
            rc, mid = client.subscribe(topic_filter, qos=entry.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None  # not connected after all: subscribed again on connect
        waiter: asyncio.Future[list[int] | None] = self._loop.create_future()
        self._suback[mid] = waiter
        return waiter

    def _cancel(self, sub: Subscription) -> None:
        entry = self._filters.get(sub.filter)
        if entry is None or not entry.set(sub, None):
            return
        if entry.handlers:
            return
        del self._filters[sub.filter]
        self._by_sub_id.pop(entry.sub_id, None)
        if self._connected and self._client is not None:
            self._send_unsubscribe(sub.filter)
        else:
            # The persistent session still holds it: drop it on the next connect.
            self._unsub_later.add(sub.filter)
