"""Run one agent until SIGTERM or SIGINT, then stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from agent.config import Config
from agent.runtime.runtime import Runtime

log = logging.getLogger(__name__)


async def serve(root: Path, config: Config) -> None:
    """Start the agent for ``root`` and keep it up until a stop signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(root, config)
    try:
        await runtime.start()
        await stop.wait()
        log.info("stop signal received")
    finally:
        await runtime.stop()
