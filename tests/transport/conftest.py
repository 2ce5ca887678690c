"""Transports for the transport tests: the same tests run on inproc and on MQTT."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent.transport import InprocBroker, InprocTransport, MqttTransport, Transport

MakeTransport = Callable[..., Awaitable[Transport]]


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test uses."""
    return f"igris-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["inproc", "mqtt"])
def make_transport(request: pytest.FixtureRequest, async_cleanup: Any) -> MakeTransport:
    """``await make_transport(start=True, client_id=None, **settings)``: a transport.

    Inproc transports share one hub per test; MQTT ones share this test's
    broker. Each is stopped after the test; started ones are connected.
    """
    if request.param == "mqtt":
        broker = request.getfixturevalue("broker")

        def build(client_id: str, **kw: Any) -> Transport:
            return MqttTransport(broker.client_settings(client_id, **kw))
    else:
        hub = InprocBroker()

        def build(client_id: str, **kw: Any) -> Transport:
            return InprocTransport(hub, client_id=client_id)

    async def make(*, start: bool = True, client_id: str | None = None, **kw: Any) -> Transport:
        transport = build(client_id or f"t-{uuid.uuid4().hex[:10]}", **kw)
        async_cleanup.push(transport.stop)
        if start:
            await transport.start()
            await transport.wait_connected(5)  # type: ignore[attr-defined]
        return transport

    make.kind = request.param  # type: ignore[attr-defined]
    return make
