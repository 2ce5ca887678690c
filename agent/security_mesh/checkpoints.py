"""Ledger checkpoints: publish this device's head, cross-check every peer's.

A ledger verifies on its own, except for one thing: cutting off its newest
entries leaves a shorter chain that still verifies. So each device publishes
a signed, retained checkpoint (its size and head hash) on
``ledger/<dev>/checkpoint``, and every device keeps the newest checkpoint it
saw from each peer (``peer_checkpoints``) and flags a peer whose new
checkpoint does not extend the old one:

- ``rollback``: the new size is smaller than one already seen;
- ``fork``: the same size with another head, or the new checkpoint's
  ``history`` (the sizes and heads of the device's last 16 checkpoints,
  read back from its ledger) lists the size we saw with another head, which
  is what a rewritten past looks like.

A device checks its own retained checkpoint the same way, so a database
restored from an old backup flags itself too. Flags go into the
``peer_checkpoints`` table, the ledger (``checkpoint_flag``, once per
device and flag), the log, and ``on_flag(device_id, flag, detail)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.compat import b64url_decode, b64url_encode
from agent.db import Database
from agent.errors import TopicInvalid
from agent.identity.channel import SignedChannel
from agent.security_mesh.ledger import Ledger
from agent.transport.base import Message, Subscription
from agent.wire import Envelope, Topics

log = logging.getLogger(__name__)

HISTORY = 16
"""How many of its past checkpoints a device lists in each new one."""

ROLLBACK = "rollback"
FORK = "fork"

FlagListener = Callable[[str, str, str], None]

# Sizes of the checkpoints this device published, oldest first (meta table).
_PUBLISHED_META = "ledger.checkpoint_sizes"


class Checkpoints:
    """Publish this device's ledger checkpoints and judge the peers' ones.

    >>> cps = Checkpoints(ledger, channel, topics, db, now_ms=wall_ms)   # doctest: +SKIP
    >>> await cps.start()                                                # doctest: +SKIP
    >>> cps.flags()                                                      # doctest: +SKIP
    {'pi-07': 'rollback'}

    Each checkpoint carries the device's certificate, so a peer that never
    saw its birth (it joined later, or the retained birth came second) can
    still verify the retained checkpoint.
    """

    def __init__(
        self,
        ledger: Ledger,
        channel: SignedChannel,
        topics: Topics,
        db: Database,
        *,
        now_ms: Callable[[], int],
        interval_s: float = 30.0,
        on_flag: FlagListener | None = None,
    ):
        self.ledger = ledger
        self.channel = channel
        self.topics = topics
        self.db = db
        self.interval_s = interval_s
        self._now_ms = now_ms
        self._on_flag = on_flag
        self._device = channel.identity.device_id
        self._last: tuple[int, bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self.published = 0
        self.ignored: Counter[str] = Counter()

    async def start(self) -> None:
        # Subscribe first: our own retained checkpoint from a previous run then
        # arrives before the new one, and a local rollback shows.
        self._subscription = await self.channel.subscribe(
            self.topics.filter("ledger", "+", "checkpoint"), self._on_checkpoint)
        await self.publish()
        self._task = asyncio.create_task(self._run(), name="igris.ledger.checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.publish()

    async def publish(self) -> bool:
        """Publish a checkpoint if the head moved since the last one (always the first time)."""
        size, head = self.ledger.head()
        if (size, head) == self._last:
            return False
        published = json.loads(self.db.get_meta(_PUBLISHED_META) or "[]")
        heads = self.ledger.head_at(published)
        history = [[s, b64url_encode(heads[s])] for s in published if s in heads and s != size]
        self._remember(size, published)
        await self.channel.publish(
            self.topics.checkpoint(self._device), "ledger",
            {"size": size, "head": b64url_encode(head), "history": history,
             "cert": self.channel.identity.certificate.to_dict()},
            qos=1, retain=True,
        )
        self._last = (size, head)
        self.published += 1
        return True

    def _remember(self, size: int, published: list[int]) -> None:
        """Note the size about to be published, with a ``synchronous=FULL`` commit.

        In WAL mode a FULL commit syncs the whole log, so every entry this
        checkpoint covers is on disk before peers see it: a power cut cannot
        make the device look like it rolled back what it announced.
        """
        sizes = [*[s for s in published if s != size][-(HISTORY - 1):], size]
        conn = self.db.conn
        conn.execute("PRAGMA synchronous=FULL")
        try:
            with self.db.transaction():
                self.db.set_meta(_PUBLISHED_META, json.dumps(sizes))
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")

    def flags(self) -> dict[str, str]:
        """Flagged devices: ``{device_id: "fork" | "rollback" | "fork,rollback"}``."""
        return dict(self.db.conn.execute(
            "SELECT device_id, flag FROM peer_checkpoints WHERE flag IS NOT NULL"))

    def _on_checkpoint(self, env: Envelope, message: Message) -> None:
        try:
            device = self.topics.parse(message.topic).params["dev"]
        except TopicInvalid:
            self.ignored["bad_topic"] += 1
            return
        if env.src != device:
            self.ignored["wrong_source"] += 1
            log.warning("ignored a checkpoint on %s signed by %r", message.topic, env.src)
            return
        parsed = _parse_body(env) if env.kind == "ledger" else None
        if parsed is None:
            self.ignored["malformed"] += 1
            log.warning("ignored a malformed checkpoint from %r", device)
            return
        self._judge(device, *parsed)

    def _judge(self, device: str, size: int, head: bytes, history: dict[int, bytes]) -> None:
        """Compare a checkpoint with the newest one seen from ``device``; keep and flag."""
        now = self._now_ms()
        conn = self.db.conn
        raised: list[tuple[str, str]] = []
        with self.db.transaction():
            row = conn.execute(
                "SELECT size, head, flag FROM peer_checkpoints WHERE device_id = ?", (device,)
            ).fetchone()
            if row is None:
                conn.execute("INSERT INTO peer_checkpoints (device_id, size, head, seen_ms) "
                             "VALUES (?, ?, ?, ?)", (device, size, head, now))
                return
            seen_size, seen_head, flag_text = row
            found = _compare(device, seen_size, seen_head, size, head, history)
            flags = set(flag_text.split(",")) if flag_text else set()
            raised = [(flag, detail) for flag, detail in found if flag not in flags]
            for flag, detail in raised:
                flags.add(flag)
                self.ledger.append("checkpoint_flag", {
                    "device": device, "flag": flag, "detail": detail,
                    "seen": [seen_size, b64url_encode(seen_head)],
                    "got": [size, b64url_encode(head)],
                })
            # Keep the largest checkpoint: later ones are judged against the most
            # the device ever claimed, so a rollback cannot be laundered.
            if size > seen_size:
                seen_size, seen_head = size, head
            conn.execute(
                "UPDATE peer_checkpoints SET size = ?, head = ?, seen_ms = ?, flag = ? "
                "WHERE device_id = ?",
                (seen_size, seen_head, now, ",".join(sorted(flags)) or None, device))
        for flag, detail in raised:
            log.warning("ledger checkpoint flag %s: %s", flag, detail)
            if self._on_flag is not None:
                self._on_flag(device, flag, detail)


def _compare(device: str, seen_size: int, seen_head: bytes, size: int, head: bytes,
             history: dict[int, bytes]) -> list[tuple[str, str]]:
    if size < seen_size:
        return [(ROLLBACK, f"{device!r} now claims {size} ledger entries after claiming "
                           f"{seen_size}: entries were removed (rolled back)")]
    if size == seen_size and head != seen_head:
        return [(FORK, f"{device!r} claims two different ledgers of {size} entries "
                       "(same size, different head)")]
    listed = history.get(seen_size)
    if size > seen_size and listed is not None and listed != seen_head:
        return [(FORK, f"{device!r}'s ledger no longer has the head it had at {seen_size} "
                       "entries: its past was rewritten")]
    return []


def _parse_body(env: Envelope) -> tuple[int, bytes, dict[int, bytes]] | None:
    """``(size, head, {size: head})`` from a checkpoint body, or None if it is not one."""
    body: dict[str, Any] = env.body
    try:
        size, head = body["size"], b64url_decode(body["head"])
        history = {s: b64url_decode(h) for s, h in body.get("history", ())}
    except (KeyError, TypeError, ValueError):
        return None
    if type(size) is not int or size < 0 or len(head) != 32:
        return None
    if not all(type(s) is int and len(h) == 32 for s, h in history.items()):
        return None
    return size, head, history
