"""This device's presence on the mesh: retained birth, heartbeats, death.

The birth on ``node/<dev>/state`` is retained, signed and carries the
device's certificate, so any peer (even one that joins later) can verify it
against the fleet CA with nothing else. The broker holds a signed death for
the same session as the last will; it replaces the birth if the device
vanishes. After a reconnect the birth is published again, because the will
may have fired during the outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.identity.channel import SignedChannel
from agent.transport.base import Will
from agent.wire import Topics

log = logging.getLogger(__name__)


class Presence:
    """Announce this device; ``describe()`` and ``health()`` give the current facts.

    >>> presence = Presence(channel, topics, session=7, describe=d, health=h)  # doctest: +SKIP
    >>> channel.transport.set_will(presence.will())                            # doctest: +SKIP
    >>> await presence.start()                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        channel: SignedChannel,
        topics: Topics,
        *,
        session: int,
        describe: Callable[[], dict[str, Any]],
        health: Callable[[], dict[str, Any]],
        heartbeat_s: float = 10.0,
        extra: Callable[[], dict[str, Any]] | None = None,
    ):
        self.channel = channel
        self.topics = topics
        self.session = session
        self._describe = describe
        self._health = health
        self._extra = extra  # more heartbeat fields (memory sync: pool digests)
        self.heartbeat_s = heartbeat_s
        self.heartbeats_sent = 0
        self._task: asyncio.Task[None] | None = None
        self._rebirths: set[asyncio.Task[None]] = set()
        self._device = channel.identity.device_id

    def will(self) -> Will:
        """The signed death the broker sends for this session if we vanish."""
        env = self.channel.seal("death", self._death("lost"))
        return Will(self.topics.state(self._device), env.encode(), qos=1, retain=True)

    async def start(self) -> None:
        self.channel.transport.add_connection_listener(self._on_connection)
        self._task = asyncio.create_task(self._beat(), name="igris.presence.heartbeat")
        # Not yet connected: the listener publishes the birth on connect, so it
        # is not also queued offline and sent twice.
        if self.channel.transport.connected:
            await self.publish_birth()

    async def stop(self) -> None:
        """Stop heartbeats and publish a graceful death (retained) for this session."""
        tasks = [*self._rebirths, *([self._task] if self._task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        await self.channel.publish(
            self.topics.state(self._device), "death", self._death("shutdown"), qos=1,
            retain=True,
        )

    def _death(self, reason: str) -> dict[str, Any]:
        # With the certificate: the death stays retained, and an observer that
        # never saw this device alive can still verify it (and list it dead).
        return {"session": self.session, "reason": reason,
                "cert": self.channel.identity.certificate.to_dict()}

    async def publish_birth(self) -> None:
        body = dict(self._describe())
        body.update({
            "session": self.session,
            "cert": self.channel.identity.certificate.to_dict(),
            "health": self._health(),
        })
        await self.channel.publish(
            self.topics.state(self._device), "state", body, qos=1, retain=True
        )

    def _on_connection(self, connected: bool) -> None:
        if connected and self._task is not None:
            task = asyncio.get_running_loop().create_task(
                self.publish_birth(), name="igris.presence.rebirth"
            )
            # Held until done: the loop keeps only weak references to tasks.
            self._rebirths.add(task)
            task.add_done_callback(self._rebirths.discard)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self.heartbeats_sent += 1
            try:
                body = dict(self._extra()) if self._extra else {}
                body.update({"session": self.session, "seq": self.heartbeats_sent,
                             "health": self._health()})
                await self.channel.publish(self.topics.hb(self._device), "state", body, qos=0)
            except Exception:
                log.exception("heartbeat %d not sent", self.heartbeats_sent)
