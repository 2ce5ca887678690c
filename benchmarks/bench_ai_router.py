"""The AI router's own cost: decisions, local inference through it, and peer offload.

Targets (issue 5):

- router decision: median <= 20 µs (three backends: the local model, a peer
  and a remote API, on a device state with every constraint in play);
- local inference through the router: median overhead over a raw
  ``invoke()`` of the same model <= 30 µs (the raw floor and the alternating
  measurement are ``bench_ai_local.measure_local``; the router runs with
  exploration off, so every request is the local one measured);
- peer offload round trip on loopback: <= 2x the raw MQTT QoS 1 round trip
  plus the peer's raw invoke. Two real runtimes (a Pi running digits-mlp and
  a Jetson enrolled with ``model:digits-cnn``) on a real Mosquitto; the Pi
  calls the Jetson's ``infer`` command for digits-cnn. The floor, measured
  in the same run: two raw paho clients (TCP_NODELAY, QoS 1), one echoing
  the other's request to a response topic, plus a raw invoke of digits-cnn.

    python benchmarks/bench_ai_router.py [--rounds 3000] [--offloads 300] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import Janitor, Report, Target, make_ca, pre_enroll
from bench_ai_local import measure_local, raw_input, raw_interpreter

from agent.ai.backend import InferRequest
from agent.ai.local import LocalTflite
from agent.ai.models import holdout, model_catalog
from agent.ai.peer import PeerBackend
from agent.ai.remote import RemoteTensor
from agent.ai.router import DeviceState, Router
from agent.identity import enroll
from agent.mesh.policy_schema import default_policy

DECISION_TARGET_US = 20.0
OVERHEAD_TARGET_US = 30.0
OFFLOAD_TARGET_RATIO = 2.0


class _RouterAsBackend:
    """``measure_local`` wants ``infer(request)``; the router also returns its decision."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.runs_inline = True

    async def infer(self, request: InferRequest) -> Any:
        result, _decision = await self.router.infer(request)
        return result


def measure_decision(rounds: int) -> dict[str, Any]:
    policy = default_policy()
    catalog = model_catalog()
    local = LocalTflite("local:digits-mlp", catalog["digits-mlp"])
    peer = PeerBackend(None, "jetson", ["digits-mlp", "digits-cnn"],  # type: ignore[arg-type]
                       accuracy=lambda m: catalog[m].holdout_accuracy)
    remote = RemoteTensor("remote:tensor", "http://127.0.0.1:9", ["digits-mlp"])
    state = DeviceState(battery_percent=45, on_battery=True, celsius=62.0, metered=False)
    router = Router(lambda: [local, peer, remote], policy_section=lambda n: policy.get(n, {}),
                    state=lambda: state)
    request = InferRequest("digits-mlp", inputs=holdout()[0][0], deadline_ms=500)
    for _ in range(2000):
        router.decide(request)
    times = []
    clock = time.perf_counter
    for _ in range(rounds):
        start = clock()
        router.decide(request)
        times.append(clock() - start)
    return {"decision_us": statistics.median(times) * 1e6, "rounds": rounds,
            "backends": 3, "sample": router.decide(request).to_dict()}


async def measure_router_local(rounds: int) -> dict[str, Any]:
    policy = default_policy()
    catalog = model_catalog()
    local = LocalTflite("local:digits-mlp", catalog["digits-mlp"])
    remote = RemoteTensor("remote:tensor", "http://127.0.0.1:9", ["digits-mlp"])
    router = Router(lambda: [local, remote], policy_section=lambda n: policy.get(n, {}),
                    state=DeviceState, explore=0.0)
    try:
        return await measure_local(_RouterAsBackend(router), raw_interpreter("digits-mlp"),
                                   model="digits-mlp", sample=holdout()[0][0], rounds=rounds)
    finally:
        local.close()


def raw_round_trip(port: int, rounds: int) -> float:
    """Median seconds of a raw paho QoS 1 request and its echoed reply (TCP_NODELAY)."""
    import paho.mqtt.client as mqtt

    def client(name: str) -> Any:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                        protocol=mqtt.MQTTv5)

        def nodelay(_c: Any, _u: Any, sock: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        c.on_socket_open = nodelay
        c.connect("127.0.0.1", port)
        c.loop_start()
        return c

    echo, asker = client("floor-echo"), client("floor-ask")
    got = threading.Event()
    echo.on_message = lambda c, _u, m: c.publish("floor/reply", m.payload, qos=1)
    asker.on_message = lambda _c, _u, _m: got.set()
    ready = threading.Event()
    echo.on_subscribe = asker.on_subscribe = lambda *_a: ready.set()
    echo.subscribe("floor/ask", qos=1)
    ready.wait(5)
    ready.clear()
    asker.subscribe("floor/reply", qos=1)
    ready.wait(5)
    payload = b"x" * 600  # about an infer request's size
    times = []
    for i in range(rounds + 50):
        got.clear()
        start = time.perf_counter()
        asker.publish("floor/ask", payload, qos=1)
        if not got.wait(5):
            raise RuntimeError("raw echo did not come back")
        if i >= 50:
            times.append(time.perf_counter() - start)
    for c in (echo, asker):
        c.loop_stop()
        c.disconnect()
    return statistics.median(times)


async def measure_offload(url: str, base: Path, rounds: int) -> dict[str, Any]:
    from agent.config import build_config
    from agent.runtime import Runtime

    runtimes = []
    for name in ("pi", "jetson"):
        config = build_config([("bench", {
            "mqtt": {"broker": url}, "health": {"pin_factory": "mock"},
            "agent": {"log_level": "warning"}})])
        rt = Runtime(base / name, config)
        await rt.start()
        runtimes.append(rt)
    pi, _jetson = runtimes
    try:
        deadline = time.monotonic() + 10
        while not any(b.name == "peer:jetson" for b in pi.ai.backends()):
            if time.monotonic() > deadline:
                raise RuntimeError("the Pi never saw the Jetson's model")
            await asyncio.sleep(0.05)
        peer = next(b for b in pi.ai.backends() if b.name == "peer:jetson")
        inputs = holdout()[0]
        times = []
        for i in range(rounds + 30):
            request = InferRequest("digits-cnn", inputs=inputs[i % len(inputs)])
            start = time.perf_counter()
            await peer.infer(request)
            if i >= 30:
                times.append(time.perf_counter() - start)
        return {"offload_ms": statistics.median(times) * 1000, "rounds": rounds}
    finally:
        for rt in runtimes:
            await rt.stop()


def raw_invoke_us(model: str, rounds: int = 2000) -> float:
    raw = raw_interpreter(model)
    x = raw_input(raw, holdout()[0][0])
    in_index = raw.get_input_details()[0]["index"]
    out_index = raw.get_output_details()[0]["index"]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        raw.set_tensor(in_index, x)
        raw.invoke()
        raw.get_tensor(out_index)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="decisions / local requests")
    parser.add_argument("--offloads", type=int, default=300, help="peer round trips")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    decision = measure_decision(args.rounds * 5)
    local = asyncio.run(measure_router_local(args.rounds))
    with Janitor() as jan:
        base = Path(tempfile.mkdtemp(prefix="igb"))
        jan.callback(shutil.rmtree, base, ignore_errors=True)
        broker = jan.broker(base / "mq")
        ca = make_ca(base / "ca", "bench")
        pre_enroll(base / "pi", ca, "pi")
        enroll(base / "jetson", ca, "jetson", now_ms=int(time.time() * 1000),
               caps=("model:digits-cnn",))
        floor_rtt_ms = raw_round_trip(broker.port, args.offloads) * 1000
        offload = asyncio.run(measure_offload(broker.url, base, args.offloads))
    invoke_us = raw_invoke_us("digits-cnn")
    floor_ms = floor_rtt_ms + invoke_us / 1000

    report = Report("bench_ai_router")
    report.targets.append(Target(
        name="router decision (3 backends)", value=decision["decision_us"], unit="µs",
        target=DECISION_TARGET_US, compare="<=", judged="value"))
    report.targets.append(Target(
        name="local infer through the router, overhead", value=local["overhead_us"], unit="µs",
        target=OVERHEAD_TARGET_US, compare="<=", judged="value", floor=local["raw_us"]))
    report.targets.append(Target(
        name="peer offload round trip", value=offload["offload_ms"], unit="ms",
        target=OFFLOAD_TARGET_RATIO, compare="<=", judged="ratio", floor=floor_ms,
        ratio=offload["offload_ms"] / floor_ms,
        note=f"floor: raw QoS 1 round trip {floor_rtt_ms:.3f} ms + raw invoke "
             f"{invoke_us:.1f} µs"))
    report.details.update(decision=decision, local=local, offload=offload,
                          floor_rtt_ms=floor_rtt_ms, raw_invoke_us=invoke_us)

    def lines() -> Any:
        yield (f"decision: {decision['decision_us']:.2f} µs median over {decision['rounds']} "
               f"(choice {decision['sample']['choice']})")
        yield (f"local via router: raw invoke {local['raw_us']:.2f} µs, router.infer "
               f"{local['infer_us']:.2f} µs, overhead {local['overhead_us']:.2f} µs")
        yield (f"peer offload: {offload['offload_ms']:.3f} ms median over {offload['rounds']}; "
               f"floor {floor_ms:.3f} ms (raw QoS 1 round trip {floor_rtt_ms:.3f} ms + "
               f"raw invoke {invoke_us:.1f} µs)")

    report.print(args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
