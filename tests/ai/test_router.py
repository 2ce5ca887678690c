"""The router over real backends: LiteRT models, a remote API on a real socket, and a
peer device answering ``infer`` over the signed command bus (in-process hub)."""

from __future__ import annotations

import contextlib
import random

import pytest

from agent.ai.backend import InferenceError, InferRequest
from agent.ai.local import LocalTflite
from agent.ai.models import holdout, model_catalog
from agent.ai.peer import PeerBackend
from agent.ai.remote import RemoteTensor
from agent.ai.router import DeviceState, Router
from agent.ai.service import AiService, device_state
from agent.bus import Bus, CommandRegistry, CommandServer
from agent.db import Database
from agent.device import HealthMonitor, load_profile
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.mesh.policy_schema import default_policy
from agent.security_mesh import Ledger
from agent.transport import InprocBroker, InprocTransport
from agent.wire import HybridClock, Topics
from tests.support.fake_model_api import FakeModelApi

NOW = 1_800_000_000_000
TOPICS = Topics("lab")
CATALOG = model_catalog()
POLICY = default_policy()


def clock() -> int:
    return NOW


class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


def policy_section(name: str) -> dict:
    return POLICY.get(name, {})


class Device:
    """Identity, channel, ledger, command server and bus on the shared hub."""

    def __init__(self, tmp, hub, ca, dev, **kw):
        enroll(tmp / dev, ca, dev, now_ms=NOW, **kw)
        self.identity = Identity.load(tmp / dev)
        self.db = Database.open(tmp / dev / "igris.db")
        self.transport = InprocTransport(hub, client_id=dev)
        hlc = HybridClock(clock)
        self.channel = SignedChannel(
            self.transport, self.identity,
            TrustStore(self.identity.ca_public, fleet="lab", now_ms=clock), hlc=hlc, now_ms=clock)
        self.registry = CommandRegistry()
        self.server = CommandServer(self.channel, TOPICS, self.db, self.registry,
                                    record=Ledger(self.db, self.identity, hlc).append,
                                    policy_section=policy_section, now_ms=clock)
        self.bus = Bus(self.channel, TOPICS, membership=None, serves_commands=True)

    async def start(self) -> Device:
        await self.transport.start()
        await self.server.start()
        await self.bus.start()
        return self

    async def close(self) -> None:
        await self.server.stop()
        await self.transport.stop()
        self.db.close()


@pytest.fixture
def parts(tmp_path, async_cleanup):
    """A Pi (local digits-mlp), a Jetson serving digits-cnn over the bus, a remote API."""
    ca = FleetCa.init(tmp_path / "ca", "lab")
    hub = InprocBroker()
    made: list = []

    async def build(api_behaviour="answer"):
        pi = await Device(tmp_path, hub, ca, "pi").start()
        jetson = await Device(tmp_path, hub, ca, "jetson", caps=("model:digits-cnn",)).start()
        service = AiService(catalog=CATALOG, local_models=["digits-cnn"], remote=None,
                            bus=jetson.bus, policy_section=policy_section,
                            state=DeviceState)
        jetson.registry.add(service.command())
        # Peers know each other from their births (membership); here, directly.
        pi.channel.trust.learn(jetson.identity.certificate)
        api = FakeModelApi(behaviour=api_behaviour)
        await api.__aenter__()
        local = LocalTflite("local:digits-mlp", CATALOG["digits-mlp"])
        peer = PeerBackend(pi.bus, "jetson", ["digits-cnn", "digits-mlp"],
                           accuracy=lambda m: CATALOG[m].holdout_accuracy)
        remote = RemoteTensor("remote:tensor", api.url, ["digits-mlp"], timeout_s=2,
                              accuracy=lambda _m: 0.99)
        made.extend([pi, jetson, service, api, local])
        return pi, local, peer, remote, api

    async def close():
        for thing in made:
            with contextlib.suppress(Exception):
                if isinstance(thing, Device):
                    await thing.close()
                elif isinstance(thing, FakeModelApi):
                    await thing.__aexit__(None, None, None)
                else:
                    thing.close()

    async_cleanup.push(close)
    return build


def router(backends, state: DeviceState | None = None, **kw) -> Router:
    kw.setdefault("explore", 0.0)
    fixed = state or DeviceState()
    return Router(lambda: backends, policy_section=policy_section, state=lambda: fixed, **kw)


SAMPLE = holdout()[0][0]


async def test_states_steer_the_choice_with_plain_reasons(parts):
    _, local, peer, remote, _ = await parts()
    backends = [local, peer, remote]
    req = InferRequest("digits-mlp", inputs=SAMPLE)
    normal = router(backends).decide(req)
    assert {n for n, _ in normal.ranked} == {"local:digits-mlp", "peer:jetson", "remote:tensor"}
    low = router(backends, DeviceState(battery_percent=12, on_battery=True)).decide(req)
    assert low.excluded == {"remote:tensor": "battery 12 % below 20 %"}
    assert any("energy weighs 2x" in r for r in low.reasons)
    metered = router(backends, DeviceState(metered=True)).decide(req)
    assert metered.excluded == {"remote:tensor": "metered link"}
    hot = router(backends, DeviceState(celsius=86)).decide(req)
    assert hot.excluded == {"local:digits-mlp": "86 °C above 80 °C"}
    throttled = router(backends, DeviceState(throttled=True)).decide(req)
    assert throttled.excluded == {"local:digits-mlp": "throttled"}
    saving = router(backends, DeviceState(power_save=True)).decide(req)
    assert saving.choice == "local:digits-mlp"
    assert any("power-save" in r for r in saving.reasons)
    private = router(backends).decide(InferRequest("digits-mlp", inputs=SAMPLE, private=True))
    assert private.choice == "local:digits-mlp" and set(private.excluded) == {
        "peer:jetson", "remote:tensor"}
    picky = router(backends).decide(InferRequest("digits-cnn", inputs=SAMPLE, min_accuracy=0.97))
    assert picky.choice == "peer:jetson"
    hurry = router(backends).decide(InferRequest("digits-mlp", inputs=SAMPLE, deadline_ms=50))
    assert "remote:tensor" in hurry.excluded and "deadline" in hurry.excluded["remote:tensor"]


async def test_device_state_comes_from_health_gpio_and_sysfs(tmp_path):
    from gpiozero.pins.mock import MockFactory

    sys_root = tmp_path / "sys"
    zone = sys_root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("86500\n")
    bat = sys_root / "class" / "power_supply" / "BAT0"
    bat.mkdir(parents=True)
    for name, value in (("capacity", "15"), ("status", "Discharging"), ("type", "Battery")):
        (bat / name).write_text(value + "\n")
    import dataclasses

    from agent.device import PowerSpec

    rpi4 = load_profile("rpi4")
    profile = dataclasses.replace(rpi4, has_vcgencmd=False,
                                  power=PowerSpec("sysfs:BAT0", 2.7, 6.4, 20.0))
    factory = MockFactory()
    monitor = HealthMonitor(profile, sysfs_root=sys_root, pin_factory=factory)
    try:
        factory.pin(rpi4.gpio.inputs["power_save"].pin).drive_low()  # switch closed
        state = device_state((await monitor.sample()).to_dict(), metered=False)
    finally:
        monitor.close()
        factory.close()
    assert state == DeviceState(battery_percent=15.0, on_battery=True, celsius=86.5,
                                throttled=False, metered=False, power_save=True)


async def test_local_peer_and_remote_answer_and_the_peer_runs_the_stronger_model(parts):
    pi, local, peer, remote, api = await parts()
    inputs, labels = holdout()
    r = router([local, peer, remote])
    for backend in (local, peer):
        result = await backend.infer(InferRequest("digits-cnn" if backend is peer
                                                  else "digits-mlp", inputs=inputs[3]))
        assert result.extra["label"] == labels[3]
    out = await remote.infer(InferRequest("digits-mlp", inputs=[1, 2]))
    assert out.outputs == [2, 4] and api.requests[-1].path == "/v1/infer"
    result, decision = await r.infer(InferRequest("digits-cnn", inputs=inputs[5]))
    assert decision.choice == "peer:jetson" and result.extra["label"] == labels[5]
    del pi


async def test_fallback_when_the_remote_dies_and_the_breaker_opens_then_recovers(parts):
    _, local, _, remote, api = await parts()
    api.behaviour = "close"  # hangs up mid-request
    ticks = Clock()
    r = router([remote, local], DeviceState(), clock=ticks)
    # Make the remote look best so it is tried first.
    r._estimate(remote, "digits-mlp").latency_ms = 0.001
    for _ in range(3):
        result, decision = await r.infer(InferRequest("digits-mlp", inputs=SAMPLE))
        assert result.backend == "local:digits-mlp"
        assert any("fell back" in reason for reason in decision.reasons)
    assert r.stats()["breakers"]["remote:tensor"] == "open"
    assert "circuit breaker" in r.decide(InferRequest("digits-mlp", inputs=SAMPLE)).excluded[
        "remote:tensor"]
    api.behaviour = "answer"
    ticks.s += 6  # past the cooldown: one trial gets through and closes it again
    r._estimate(remote, "digits-mlp").latency_ms = 0.001
    result, _ = await r.infer(InferRequest("digits-mlp", inputs=[0.5] * 64))
    assert result.backend == "remote:tensor"
    assert r.stats()["breakers"]["remote:tensor"] == "closed" and r.fallbacks == 3


async def test_exploration_sometimes_tries_the_runner_up(parts):
    _, local, peer, _, _ = await parts()
    r = router([local, peer], explore=0.5, rng=random.Random(3))
    choices = {r.decide(InferRequest("digits-mlp", inputs=SAMPLE)).choice for _ in range(40)}
    assert choices == {"local:digits-mlp", "peer:jetson"}


async def test_no_backend_names_every_reason(parts):
    _, local, _, _, _ = await parts()
    r = router([local], DeviceState(celsius=90))
    with pytest.raises(InferenceError, match="local:digits-mlp: 90 °C above 80 °C"):
        await r.infer(InferRequest("digits-mlp", inputs=SAMPLE))
    with pytest.raises(InferenceError, match="does not serve text"):
        await r.infer(InferRequest("text", text="hello"))


async def test_bench_figures_seed_latency_energy_and_accuracy():
    from agent.ai.bench import BenchFigure

    figure = BenchFigure("local:digits-mlp", "digits-mlp", p50_ms=0.006, p95_ms=0.007,
                         accuracy=0.9611, mj_per_inference=0.04, samples=360, measured_ms=NOW)
    service = AiService(catalog=CATALOG, local_models=["digits-mlp"], remote=None, bus=None,
                        policy_section=policy_section, state=DeviceState,
                        bench={("local:digits-mlp", "digits-mlp"): figure})
    try:
        local = service.local[0]
        assert local.accuracy("digits-mlp") == 0.9611  # the bench wins over the catalog
        estimates = service.router.stats()["estimates"]
        assert estimates == {}
        service.router.decide(InferRequest("digits-mlp", inputs=SAMPLE))
        assert service.router.stats()["estimates"]["local:digits-mlp/digits-mlp"][
            "latency_ms"] == 0.006
    finally:
        service.close()


async def test_policy_local_only_and_private_tasks_keep_requests_on_the_device(parts):
    from agent.mesh.policy_schema import validate_policy

    _, local, peer, remote, _ = await parts()
    req = InferRequest("digits-mlp", inputs=SAMPLE)
    for extra, why in (({"local_only": True}, "policy: local only"),
                       ({"tasks": {"digits-mlp": {"private": True}}},
                        "private: stays on this device")):
        doc = validate_policy({**POLICY, "router": {**POLICY["router"], **extra}})
        r = Router(lambda: [local, peer, remote], policy_section=lambda n, d=doc: d.get(n, {}),
                   state=DeviceState, explore=0.0)
        decision = r.decide(req)
        assert decision.choice == "local:digits-mlp"
        assert decision.excluded == {"peer:jetson": why, "remote:tensor": why}
