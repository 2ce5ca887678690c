"""Devices on one in-process hub, for tests that need several without processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.identity import FleetCa
from agent.transport import InprocBroker
from tests.support.clock import Clock

NOW = 1_800_000_000_000


async def settle(turns: int = 30) -> None:
    """Let the hub's deliveries (scheduled with call_soon) and their handlers run."""
    for _ in range(turns):
        await asyncio.sleep(0)


def node_factory(node_cls: Any, tmp_path: Path, async_cleanup: Any
                 ) -> tuple[Callable[..., Awaitable[Any]], Clock]:
    """``make(dev, **kw)`` starts ``node_cls(tmp_path, hub, ca, dev, clock, **kw)``.

    Every node shares one CA (fleet ``lab``), hub and hand-set clock; nodes
    not stopped by the test (``node.closed``) are stopped at its end.
    """
    ca = FleetCa.init(tmp_path / "ca", "lab")
    hub = InprocBroker()
    clock = Clock(NOW)
    nodes: list[Any] = []

    async def make(dev: str, **kw: Any) -> Any:
        node = await node_cls(tmp_path, hub, ca, dev, clock, **kw).start()
        nodes.append(node)
        return node

    async def close() -> None:
        for node in nodes:
            if not node.closed:
                with contextlib.suppress(Exception):
                    await node.stop()

    async_cleanup.push(close)
    return make, clock
