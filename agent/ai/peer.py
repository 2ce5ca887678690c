"""A stronger device in the mesh as a backend: the ``infer`` command over the bus.

A device that can serve a model says so in its certificate's capabilities
(``igris enroll ... --cap model:digits-cnn``), so a Pi learns from the
Jetson's birth that it may offload that model to it. The call is an
ordinary signed command (``infer``), so it is authenticated, recorded in
the peer's ledger and answered on the caller's reply topic like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agent.ai.backend import PEER, InferenceError, InferRequest, InferResult

CAP_PREFIX = "model:"
INFER_COMMAND = "infer"
_DEFAULT_TIMEOUT_S = 5.0


class _Requester(Protocol):
    """The bus's ``request`` (agent.bus.Bus): what a peer backend sends through."""

    async def request(self, target: str, command: str, args: dict[str, Any] | None = None,
                      *, timeout: float = 5.0, mode: str = "all") -> Any: ...


def served_models(caps: Sequence[str]) -> list[str]:
    """The models a certificate's capabilities offer (``model:<name>``)."""
    return [cap[len(CAP_PREFIX):] for cap in caps if cap.startswith(CAP_PREFIX)]


class PeerBackend:
    """Offload to ``device_id`` through the command bus.

    >>> jetson = PeerBackend(bus, "jetson-01", ["digits-cnn"], accuracy=catalog_accuracy)
    ...                                                                  # doctest: +SKIP
    """

    kind = PEER

    def __init__(self, bus: _Requester, device_id: str, models: Sequence[str], *,
                 accuracy: Callable[[str], float | None] = lambda _m: None):
        self.bus = bus
        self.device_id = device_id
        self.name = f"peer:{device_id}"
        self._models = tuple(models)
        self._accuracy = accuracy

    @property
    def models(self) -> Sequence[str]:
        return self._models

    def accuracy(self, model: str) -> float | None:
        return self._accuracy(model)

    def __repr__(self) -> str:
        return f"<PeerBackend {self.device_id} {list(self._models)}>"

    async def infer(self, request: InferRequest) -> InferResult:
        args: dict[str, Any] = {"model": request.model}
        if request.inputs is not None:
            args["inputs"] = request.inputs
        if request.text is not None:
            args["text"] = request.text
        timeout = (request.deadline_ms / 1000 if request.deadline_ms is not None
                   else _DEFAULT_TIMEOUT_S)
        result = await self.bus.request(self.device_id, INFER_COMMAND, args, timeout=timeout,
                                        mode="first")
        reply = result.replies.get(self.device_id)
        if reply is None:
            why = result.missing.get(self.device_id, "no reply")
            raise InferenceError("peer_unavailable", f"{self.device_id}: {why}")
        if not reply.ok:
            error = reply.error or {}
            raise InferenceError(f"peer_{error.get('code', 'error')}",
                                 f"{self.device_id}: {error.get('message', '')}")
        body = reply.result or {}
        return InferResult(body.get("outputs"), self.name, reply.ms,
                           {k: v for k, v in body.items() if k != "outputs"})
