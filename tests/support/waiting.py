"""Waiting in async tests: let the test's loop run until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], object], timeout: float = 5.0, *,
                every: float = 0.002) -> None:
    """Poll ``condition()`` every ``every`` s; AssertionError if it is still false after
    ``timeout`` s (a bound for a broken test, not a figure: passing tests return early)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout:g} s")
        await asyncio.sleep(every)
