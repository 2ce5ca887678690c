"""The AI core of one device: its backends, the router over them, the ``infer`` command.

Backends come from three places: the shipped models this device runs
itself (``local``), the peers whose certificates offer a model
(``model:<name>`` capabilities, followed through membership: ``peer``), and
the remote API configured in ``[ai]`` (``remote``). The peer list is rebuilt
when membership changes, not on every request, so a decision stays cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from agent.ai.backend import Backend, InferenceError, InferRequest
from agent.ai.local import LocalTflite
from agent.ai.models import ModelInfo
from agent.ai.peer import INFER_COMMAND, PeerBackend, served_models
from agent.ai.router import Decision, DeviceState, Router
from agent.bus import Arg, CommandCall, CommandSpec
from agent.errors import CommandRefused, ConfigInvalid

log = logging.getLogger(__name__)


def remote_from_settings(ai: Any) -> Backend | None:
    """The remote backend the ``[ai]`` settings describe, or None (nothing leaves the device).

    Raises ConfigInvalid for a chat API with no model name and KeyFileInvalid
    for an unsafe or unreadable key file, so a bad set-up stops the agent at
    start, not at the first request.
    """
    if not ai.remote_url:
        return None
    from agent.ai.remote import RemoteChat, RemoteTensor, load_api_key  # only with a remote

    key = load_api_key(ai.api_key_file or None, ai.api_key_env or None)
    serves = [n.strip() for n in ai.remote_serves.split(",") if n.strip()]

    def accuracy(_model: str) -> float | None:
        return ai.remote_accuracy or None

    common = {"api_key": key, "timeout_s": ai.remote_timeout_s, "accuracy": accuracy,
              "ca_file": ai.remote_ca_file or None}
    if ai.remote_kind == "tensor":
        return RemoteTensor("remote:tensor", ai.remote_url, serves, **common)
    if not ai.remote_model:
        raise ConfigInvalid("[ai] remote_model: a chat API needs the model name to ask for "
                            "(e.g. gpt-4o-mini)")
    return RemoteChat("remote:chat", ai.remote_url, ai.remote_model, tasks=serves, **common)


def device_state(health: dict[str, Any] | None, *, metered: bool) -> DeviceState:
    """What the router weighs, from a health report (``HealthReport.to_dict()``)."""
    if not health:
        return DeviceState(metered=metered)
    battery = health.get("battery") or {}
    throttle = health.get("throttle") or {}
    return DeviceState(
        battery_percent=battery.get("percent"),
        on_battery=battery.get("plugged") is False,
        celsius=health.get("max_temperature_c"),
        throttled=bool(throttle.get("throttled") or throttle.get("under_voltage")),
        metered=metered,
        power_save=bool((health.get("gpio") or {}).get("power_save")),
    )


class AiService:
    """Local models, peers and a remote API behind one :class:`Router`."""

    def __init__(
        self,
        *,
        catalog: dict[str, ModelInfo],
        local_models: Sequence[str],
        remote: Backend | None,
        bus: Any,
        policy_section: Callable[[str], dict[str, Any]],
        state: Callable[[], DeviceState],
        bench: dict[tuple[str, str], Any] | None = None,
        me: str = "",
    ):
        self.catalog = catalog
        bench = bench or {}
        unknown = sorted(set(local_models) - set(catalog))
        if unknown:
            log.warning("no shipped model named %s; local models: %s", ", ".join(unknown),
                        ", ".join(sorted(catalog)))
        self.local: list[LocalTflite] = [
            LocalTflite(f"local:{name}", catalog[name],
                        measured_accuracy=getattr(bench.get((f"local:{name}", name)),
                                                  "accuracy", None))
            for name in local_models if name in catalog
        ]
        self.remote = remote
        self._bus = bus
        self._me = me
        self._peers: list[PeerBackend] = []
        self._all: list[Backend] = [*self.local, *([remote] if remote else [])]
        self.router = Router(lambda: self._all, policy_section=policy_section, state=state,
                             energy_mj=self._figure(bench, "mj_per_inference"),
                             prior_ms=self._figure(bench, "p50_ms"))
        self.local_router = Router(lambda: self.local, policy_section=policy_section,
                                   state=DeviceState, explore=0.0)

    @staticmethod
    def _figure(bench: dict[tuple[str, str], Any],
                name: str) -> Callable[[str, str], float | None]:
        """One of the bench's figures for (backend, model), or None when not measured."""

        def figure(backend: str, model: str) -> float | None:
            return getattr(bench.get((backend, model)), name, None)

        return figure

    def backends(self) -> list[Backend]:
        return list(self._all)

    def update_peers(self, peers: Sequence[Any]) -> None:
        """Peers that are alive and offer a shipped model become backends (on every change)."""
        fresh = []
        for peer in peers:
            if peer.state != "alive" or peer.device_id == self._me:
                continue
            models = [m for m in served_models(peer.caps) if m in self.catalog]
            if models:
                fresh.append(PeerBackend(self._bus, peer.device_id, models,
                                         accuracy=self._catalog_accuracy))
        self._peers = fresh
        self._all = [*self.local, *fresh, *([self.remote] if self.remote else [])]

    def _catalog_accuracy(self, model: str) -> float | None:
        info = self.catalog.get(model)
        return info.holdout_accuracy if info else None

    def explain(self, request: InferRequest) -> Decision:
        return self.router.decide(request)

    async def infer(self, request: InferRequest) -> dict[str, Any]:
        """Route one request; the reply says what answered and why."""
        result, decision = await self.router.infer(request)
        return {"outputs": result.outputs, "backend": result.backend,
                "latency_ms": round(result.latency_ms, 3), **result.extra,
                "decision": decision.to_dict()}

    def command(self) -> CommandSpec:
        """``infer``: run a model here for a peer (local backends only, never onward)."""

        async def infer(call: CommandCall) -> dict[str, Any]:
            request = InferRequest(call.args["model"], inputs=call.args["inputs"],
                                   text=call.args["text"], private=True)
            try:
                result, _ = await self.local_router.infer(request)
            except InferenceError as exc:
                raise CommandRefused(exc.code, exc.detail) from None
            return {"outputs": result.outputs, "latency_ms": round(result.latency_ms, 3),
                    **result.extra}

        return CommandSpec(
            INFER_COMMAND, infer, "run a model on this device for a peer",
            args={"model": Arg(str), "inputs": Arg(list, required=False),
                  "text": Arg(str, required=False)},
            timeout_s=10.0,
        )

    def stats(self) -> dict[str, Any]:
        return {"backends": [b.name for b in self._all], **self.router.stats()}

    def close(self) -> None:
        for backend in self.local:
            backend.close()
