"""An operator's short MQTT session, for commands that publish to the fleet.

``igris block add|remove`` (and ``igris policy push``) sign with the
operator's identity from ``--root`` and publish through the fleet's broker
directly: the message is the operator's, not any agent's, so no running
agent is needed::

    async with operator_session(root, broker="mqtt://broker.lan:1883") as session:
        current = await session.fetch_retained(session.topics.block_snapshot())
        await session.channel.publish(session.topics.block(), "block", body, qos=1)

The client id is ``<operator id>-cli-<random>``, so the session never
takes over the persistent session of an agent running as the same identity.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.compat import random_bytes, wall_ms
from agent.config import load_config
from agent.db import Database
from agent.errors import CertificateInvalid, ConfigInvalid
from agent.identity import Identity, SignedChannel, TrustStore
from agent.identity.trust import TrustAnchor
from agent.mesh.policy import stored_policy
from agent.security_mesh.auth import OPERATOR, anchors_from_policy
from agent.transport import MqttSettings, MqttTransport
from agent.transport.base import Message
from agent.wire import HybridClock, Topics


def database_path(root: Path) -> Path:
    """The agent database in ``root`` (the runtime's name for it)."""
    # Imported here: the runtime pulls in every component, which the CLI's
    # other commands do not need.
    from agent.runtime.runtime import DB_NAME

    return root / DB_NAME


@dataclass(slots=True)
class OperatorSession:
    """A connected operator: its identity, channel and the fleet's topics."""

    root: Path
    identity: Identity
    transport: MqttTransport
    channel: SignedChannel
    topics: Topics

    async def fetch_retained(self, topic: str, timeout_s: float = 0.25) -> Message | None:
        """The message retained on ``topic``, or None if none arrives ``timeout_s`` after
        the broker acknowledged the subscription.

        The broker sends a retained message right after the SUBACK (which
        ``subscribe`` waits for), so a short grace suffices; the wait is only
        that long when nothing is retained.
        """
        got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            if message.retain and message.payload and not got.done():
                got.set_result(message)

        sub = await self.transport.subscribe(topic, on_message)
        try:
            return await asyncio.wait_for(got, timeout_s)
        except asyncio.TimeoutError:
            return None
        finally:
            sub.cancel()


@asynccontextmanager
async def operator_session(
    root: Path,
    *,
    broker: str | None = None,
    connect_timeout_s: float = 5.0,
    now_ms: Callable[[], int] = wall_ms,
) -> AsyncIterator[OperatorSession]:
    """Connect as the operator enrolled in ``root``; disconnect cleanly on exit.

    The broker is ``broker`` or the root's ``[mqtt] broker`` (agent.toml or
    ``IGRIS_MQTT_BROKER``), with its TLS files. Raises NotEnrolled,
    CertificateInvalid (not an operator), ConfigInvalid (no broker) or
    BrokerUnavailable, each with a one-line message.
    """
    identity = Identity.load(root, now_ms=now_ms())
    if identity.role != OPERATOR:
        raise CertificateInvalid(
            f"{str(root)!r} holds {identity.role} {identity.device_id!r}; this command needs "
            "an operator's root (igris enroll --role operator ...)"
        )
    config = load_config(root, overrides={"mqtt": {"broker": broker}} if broker else None)
    mqtt = config.mqtt
    if not mqtt.broker:
        raise ConfigInvalid(
            "no broker to reach the fleet: pass --broker mqtt://HOST:PORT or set "
            f"[mqtt] broker in {str(root / 'agent.toml')!r}"
        )
    settings = MqttSettings.from_url(
        mqtt.broker,
        client_id=f"{identity.device_id}-cli-{random_bytes(4).hex()}",
        keepalive=mqtt.keepalive_s,
        protocol=mqtt.protocol,
        ca_file=mqtt.ca_file or None,
        cert_file=mqtt.cert_file or None,
        key_file=mqtt.key_file or None,
        session_expiry_s=0,  # nothing to keep on the broker after the command
        connect_timeout_s=connect_timeout_s,
    )
    trust = TrustStore(identity.ca_public, fleet=identity.fleet, now_ms=now_ms)
    trust.set_anchors(trust_anchors(root, identity))
    transport = MqttTransport(settings)
    channel = SignedChannel(
        transport, identity, trust, hlc=HybridClock(now_ms), now_ms=now_ms,
        max_bytes=config.limits.max_message_bytes,
        skew_ms=int(config.limits.clock_skew_s * 1000),
    )
    topics = Topics(identity.fleet, mqtt.topic_prefix)
    await transport.start()
    try:
        await transport.wait_connected(connect_timeout_s)
        yield OperatorSession(root, identity, transport, channel, topics)
    finally:
        await transport.stop()


def trust_anchors(root: Path, identity: Identity) -> tuple[TrustAnchor, ...]:
    """The CAs to trust: the policy in force here if an agent runs in ``root``, else ``ca.pub``.

    During a CA rotation, other operators' entries may come from the CA this
    root does not hold in ``ca.pub``; the policy in force names both.
    """
    path = database_path(root)
    if not path.exists():
        return (TrustAnchor(identity.ca_public),)
    db = Database.open(path)
    try:
        stored = stored_policy(db.conn)
    finally:
        db.close()
    if stored is None:
        return (TrustAnchor(identity.ca_public),)
    return anchors_from_policy(stored[0], identity.ca_public)
