"""The agent's side of the control socket: a Unix socket, mode 0600, JSON lines.

Only the agent's own user (and root) can connect, so the socket needs no
further authentication; it is how ``igris status`` and friends reach a
running agent without touching the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.control.protocol import MAX_LINE
from agent.errors import IgrisError

log = logging.getLogger(__name__)

Method = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlServer:
    """Serve ``methods`` (name → ``async fn(params) -> result``) on ``path``."""

    def __init__(self, path: Path, methods: dict[str, Method]):
        self.path = path
        self.methods = methods
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crashed run
        old_umask = os.umask(0o177)  # the socket is 0600 from the moment it exists
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log.debug("control client dropped: %s", exc)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            req_id = request.get("id")
            method = self.methods.get(request["method"])
            params = request.get("params") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"id": None, "error": {"type": "BadRequest", "message": "not a request"}}
        if method is None:
            known = ", ".join(sorted(self.methods))
            return {"id": req_id, "error": {
                "type": "UnknownMethod",
                "message": f"unknown method {request['method']!r}; known: {known}",
            }}
        try:
            return {"id": req_id, "result": await method(params)}
        except IgrisError as exc:
            return {"id": req_id, "error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:
            log.exception("control method %s failed", request["method"])
            return {"id": req_id, "error": {"type": "InternalError", "message": repr(exc)}}
