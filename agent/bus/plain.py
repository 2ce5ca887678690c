"""Plain MQTT commands: ``cmnd/<dev>/<command>`` in, ``stat/<dev>/<command>`` out.

For clients that cannot sign (``mosquitto_pub``, Node-RED, Home Assistant):
the payload is empty or a JSON object of arguments, and the answer is plain
JSON (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {...}}``)
on the matching ``stat`` topic. The broker's ACL is the only check on who
sent it, so only read-only commands run, unless the policy lists a command
in ``commands.plain_mqtt``; the server enforces that, records each run in
the ledger and rate-limits refusals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from agent.bus.server import CommandServer
from agent.errors import TopicInvalid
from agent.transport.base import Message, Transport
from agent.wire import Topics

log = logging.getLogger(__name__)
MAX_PLAIN_BYTES = 4096


class PlainCommands:
    """Answer ``cmnd/<this device>/+``.

    >>> plain = PlainCommands(transport, topics, server, device_id="pi-01")  # doctest: +SKIP
    >>> await plain.start()                                                  # doctest: +SKIP
    """

    def __init__(self, transport: Transport, topics: Topics, server: CommandServer, *,
                 device_id: str):
        self.transport = transport
        self.topics = topics
        self.server = server
        self.device_id = device_id
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = 0
        self.bad_requests = 0

    async def start(self) -> None:
        await self.transport.subscribe(
            self.topics.filter("cmnd", self.device_id, "+"), self._on_message)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_message(self, message: Message) -> None:
        if message.retain:
            return  # a stale retained command must not run at every reconnect
        try:
            command = self.topics.parse(message.topic).params["command"]
        except (TopicInvalid, KeyError):
            self.bad_requests += 1
            return
        task = asyncio.get_running_loop().create_task(self._answer(command, message.payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, command: str, payload: bytes) -> None:
        args, problem = _parse_args(payload)
        if problem is not None:
            self.bad_requests += 1
            reply: dict[str, Any] = {"ok": False,
                                     "error": {"code": "bad_args", "message": problem}}
        else:
            reply = await self.server.execute_plain(command, args)
        self.answered += 1
        try:
            await self.transport.publish(
                self.topics.stat(self.device_id, command),
                json.dumps(reply, sort_keys=True, default=str).encode(), qos=1)
        except Exception:
            log.exception("answer to plain command %s not sent", command)


def _parse_args(payload: bytes) -> tuple[dict[str, Any], str | None]:
    if len(payload) > MAX_PLAIN_BYTES:
        return {}, f"payload over {MAX_PLAIN_BYTES} bytes"
    text = payload.strip()
    if not text:
        return {}, None
    try:
        args = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return {}, "payload must be empty or a JSON object of arguments"
    if not isinstance(args, dict):
        return {}, "payload must be empty or a JSON object of arguments"
    return args, None
