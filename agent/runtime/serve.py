"""Run one agent until SIGTERM or SIGINT, then stop it cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from agent.config import Config
from agent.runtime.runtime import Runtime

log = logging.getLogger(__name__)


async def serve(root: Path, config: Config) -> int:
    """Run the agent for ``root`` until a stop signal (or it asks to restart); exit status."""
    loop = asyncio.get_running_loop()
    runtime = Runtime(root, config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stop_requested.set)
    try:
        await runtime.start()
        await runtime.stop_requested.wait()
        log.info("stopping (%s)", "restart requested" if runtime.exit_code else "stop signal")
    finally:
        await runtime.stop()
    return runtime.exit_code
