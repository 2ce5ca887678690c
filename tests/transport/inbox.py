"""A handler that collects messages, so tests wait on arrivals instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.transport.base import Message, Transport


class Inbox:
    """Use as a handler: ``await t.subscribe(f, inbox)``; then ``await inbox.wait_for(2)``."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        self._arrived.set()

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    async def wait_for(self, count: int = 1, timeout: float = 5.0,
                       where: Callable[[Message], bool] | None = None) -> list[Message]:
        """The first ``count`` messages (of those ``where`` accepts), once they are here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def chosen() -> list[Message]:
            return [m for m in self.messages if where is None or where(m)]

        while len(chosen()) < count:
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"expected {count} messages within {timeout}s, got {len(self.messages)}: "
                    f"{[(m.topic, m.payload) for m in self.messages]}")
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                continue
        return chosen()[:count]

    async def barrier(self, publisher: Transport, topic: str) -> list[Message]:
        """What arrived before two marker round trips on ``topic`` (which must reach us).

        A message the broker was going to send us (a will, a retained one)
        is in the inbox by then: the second marker is published only after
        the first came back, so the broker had a full turn in between.
        """
        for n in (1, 2):
            marker = b"barrier-%d" % n
            await publisher.publish(topic, marker, qos=1)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while marker not in self.payloads:
                self._arrived.clear()
                await asyncio.wait_for(self._arrived.wait(), max(0.01, deadline - loop.time()))
        return [m for m in self.messages if not m.payload.startswith(b"barrier-")]
