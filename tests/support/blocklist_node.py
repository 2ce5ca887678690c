"""One identity with the fleet blocklist on a transport the test chooses.

The blocklist's own tests put these on an in-process hub with a hand-set
clock; ``igris block``'s tests put them on a real Mosquitto and the wall
clock. Both drive the same real parts, so the harness is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.compat import canonical_json
from agent.db import Database
from agent.identity import Identity, SignedChannel, TrustStore
from agent.security_mesh.blocklist import BlockEntry, Blocklist, snapshot_body
from agent.transport import Transport
from agent.wire import HybridClock, Topics

TOPICS = Topics("lab")


class BlocklistNode:
    """Channel, database and blocklist of one identity, and the births it heard.

    Devices use the blocklist; operators also send entries and snapshots.
    ``records`` holds what the blocklist recorded, as ``(kind, data)``.
    """

    def __init__(self, ident: Identity, transport: Transport, clock: Callable[[], int],
                 root: Path) -> None:
        self.ident = ident
        self.transport = transport
        self.channel = SignedChannel(
            transport, ident, TrustStore(ident.ca_public, fleet="lab", now_ms=clock),
            hlc=HybridClock(clock), now_ms=clock,
        )
        self.records: list[tuple[str, dict]] = []
        self.db = Database.open(root / "igris.db")
        self.blocklist = Blocklist(self.db, self.channel, TOPICS, record=self.record,
                                   now_ms=clock)
        self.heard: list[str] = []

    def record(self, kind: str, data: dict) -> None:
        self.records.append((kind, data))

    async def start(self) -> BlocklistNode:
        await self.transport.start()
        await self.transport.wait_connected(5)
        await self.blocklist.start()
        await self.channel.subscribe(TOPICS.filter("node", "+", "state"),
                                     lambda env, _msg: self.heard.append(env.src))
        return self

    async def stop(self) -> None:
        await self.blocklist.stop()
        await self.transport.stop()
        self.db.close()

    async def birth(self) -> None:
        await self.channel.publish(TOPICS.state(self.ident.device_id), "state",
                                   {"cert": self.ident.certificate.to_dict()}, retain=True)

    async def send_entry(self, entry: BlockEntry) -> None:
        await self.transport.publish(TOPICS.block(), canonical_json(entry.envelope), qos=1)

    async def send_snapshot(self, entries: list[BlockEntry]) -> None:
        await self.channel.publish(TOPICS.block_snapshot(), "block",
                                   snapshot_body(entries, self.ident.certificate),
                                   qos=1, retain=True)
