"""Fixtures and hooks every test directory may use.

- ``async def`` tests run on a fresh event loop (``asyncio.run``) with a
  timeout (``@pytest.mark.async_timeout(seconds)``, default 20 s), so no
  plugin is needed; ``async_cleanup`` runs async teardown on that same loop.
- ``broker``: a real Mosquitto on a free loopback port (``broker.url``,
  ``broker.port``, ``kill()``, ``restart()``); ``mqtt_url`` is its URL.
- ``fleet_ca``, ``identity`` (device ``pi-01``) and its ``db``: real keys,
  certificate and SQLite file in the test's temp dir, valid at ``NOW``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.db import Database
from agent.identity import FleetCa, Identity, enroll
from tests.support.broker import MosquittoBroker
from tests.support.inproc_fleet import NOW

DEFAULT_ASYNC_TIMEOUT_S = 20.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "async_timeout(seconds): time limit for an async def test (default 20 s)"
    )


class AsyncCleanup:
    """Async teardown for an async test: ``async_cleanup.push(transport.stop)``.

    Callbacks run last-in first-out on the test's own loop once the test ends,
    pass or fail; the first error is raised after all have run.
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], Awaitable[Any]]] = []

    def push(self, callback: Callable[[], Awaitable[Any]]) -> None:
        self._callbacks.append(callback)

    async def run(self) -> None:
        first: BaseException | None = None
        while self._callbacks:
            try:
                await self._callbacks.pop()()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


@pytest.fixture
def async_cleanup() -> AsyncCleanup:
    return AsyncCleanup()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on their own event loop, within a time limit."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker else DEFAULT_ASYNC_TIMEOUT_S
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    cleanup = pyfuncitem.funcargs.get("async_cleanup")

    async def main() -> None:
        test = asyncio.ensure_future(func(**kwargs))
        try:
            # Not wait_for: a TimeoutError raised by the test itself must stay its own.
            done, _ = await asyncio.wait({test}, timeout=timeout)
            if not done:
                test.cancel()
                await asyncio.gather(test, return_exceptions=True)
                pytest.fail(f"async test took longer than {timeout}s", pytrace=False)
            test.result()
        finally:
            if isinstance(cleanup, AsyncCleanup):
                await asyncio.wait_for(cleanup.run(), 10)

    asyncio.run(main())
    return True


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running Mosquitto for this test only (stopped and removed afterwards)."""
    with MosquittoBroker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def mqtt_url(broker: MosquittoBroker) -> str:
    """``mqtt://127.0.0.1:PORT`` of this test's broker."""
    return broker.url


@pytest.fixture
def fleet_ca(tmp_path: Path) -> FleetCa:
    """A fleet CA for fleet ``lab`` in the test's temp dir."""
    return FleetCa.init(tmp_path / "ca", "lab")


@pytest.fixture
def identity(tmp_path: Path, fleet_ca: FleetCa) -> Identity:
    """Device ``pi-01`` enrolled into ``tmp_path / "root"`` (valid 10 days from NOW)."""
    enroll(tmp_path / "root", fleet_ca, "pi-01", now_ms=NOW, days=10)
    return Identity.load(tmp_path / "root")


@pytest.fixture
def db(tmp_path: Path, identity: Identity) -> Iterator[Database]:
    """That device's database, closed after the test."""
    database = Database.open(tmp_path / "root" / "igris.db")
    yield database
    database.close()
