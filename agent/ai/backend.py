"""What every AI backend is: one async call, the same request and result types.

The router (``agent/ai/router.py``) picks among backends of three kinds:
``local`` (a TFLite model on this device), ``peer`` (a stronger device in
the mesh, through the command bus) and ``remote`` (an HTTP model API). It
only ever sees this interface, so a backend can be added without touching
the router, and tests drive the router with real backends of each kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.errors import IgrisError

LOCAL = "local"
PEER = "peer"
REMOTE = "remote"


class InferenceError(IgrisError):
    """A backend could not answer; ``code`` is short and countable."""

    def __init__(self, code: str, detail: str = ""):
        self.code = code
        self.detail = detail
        super().__init__(code if not detail else f"{code}: {detail}")


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One request: which model (or task), its input, and what the caller needs.

    ``inputs`` is a nested list of numbers shaped like the model's input
    tensor (or, for text tasks, ``text``). ``deadline_ms`` and
    ``min_accuracy`` are the caller's needs; ``private`` keeps the request
    on this device whatever the weights say.
    """

    model: str
    inputs: Any = None
    text: str | None = None
    deadline_ms: float | None = None
    min_accuracy: float | None = None
    private: bool = False


@dataclass(frozen=True, slots=True)
class InferResult:
    """The answer and where it came from."""

    outputs: Any
    backend: str
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One place a request can run.

    ``name`` is unique among the router's backends (e.g. ``local:digits-mlp``,
    ``peer:jetson-01``, ``remote:openai``); ``models`` are the model names it
    serves; ``accuracy`` is its measured accuracy per model (from the bench;
    None until measured).
    """

    name: str
    kind: str

    @property
    def models(self) -> Sequence[str]: ...

    def accuracy(self, model: str) -> float | None: ...

    async def infer(self, request: InferRequest) -> InferResult:
        """Run ``request``; raise :class:`InferenceError` (never hang past a deadline)."""
        ...
