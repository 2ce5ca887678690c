"""Measure backends on a labelled sample set: latency, accuracy and energy per inference.

The router weighs backends by these figures, so they are measured on the
device itself (``igris bench``) rather than assumed: a Pi Zero and a Jetson
differ by more than any table could say. Each figure is kept in the
``ai_bench`` table, newest per backend and model::

    >>> inputs, labels = holdout()
    >>> figures = await run_bench([backend], (inputs, labels), watts=6.4)
    >>> store_bench(db, figures)
    >>> load_bench(db)[("local:digits-mlp", "digits-mlp")].accuracy
    0.9694444444444444

Energy is an estimate: the process's CPU time over the measured calls times
the board's draw under load (the target profile's ``power.watts_load``),
divided by the number of calls. It counts what this device spends; a peer's
or a remote API's own energy is not visible from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from agent.ai.backend import Backend, InferenceError, InferRequest
from agent.compat import wall_ms
from agent.db import Database

# Calls before measuring, at least this many and for at least this long: the
# first ones pay for lazy loading, caches and the latency record that decides
# inline versus executor, and the time lets start-up work in other threads
# settle (numpy's OpenBLAS threads spin for ~0.1 s after import), which the
# process CPU time would otherwise charge to the first model measured.
WARMUP_CALLS = 10
WARMUP_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class BenchFigure:
    """What one backend achieved with one model on the sample set.

    Latencies are wall-clock per call as the caller sees it (milliseconds);
    ``accuracy`` is the fraction of samples labelled right; ``measured_ms``
    is when (Unix milliseconds).
    """

    backend: str
    model: str
    p50_ms: float
    p95_ms: float
    accuracy: float
    mj_per_inference: float
    samples: int
    measured_ms: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_bench(
    backends: Iterable[Backend],
    samples: tuple[Sequence[Any], Sequence[int]],
    *,
    watts: float,
    warmup_s: float = WARMUP_SECONDS,
    cpu_time: Callable[[], float] = time.process_time,
    clock: Callable[[], float] = time.perf_counter,
    now_ms: Callable[[], int] = wall_ms,
) -> list[BenchFigure]:
    """Run every model of every backend once per sample, one call at a time.

    ``samples`` is ``(inputs, labels)``, e.g. :func:`agent.ai.models.holdout`;
    a result's label is ``extra["label"]``. ``watts`` is the board's draw
    under load; ``warmup_s`` is the least warm-up time per model before
    measuring (see :data:`WARMUP_SECONDS`). An :class:`InferenceError` stops the bench, naming the
    backend and the sample, since a figure over part of the set would
    mislead the router.
    """
    inputs, labels = samples
    if not inputs or len(inputs) != len(labels):
        raise ValueError("samples must be two equally long, non-empty sequences")
    figures = []
    for backend in backends:
        for model in backend.models:
            requests = [InferRequest(model, inputs=x) for x in inputs]
            warm_until = clock() + warmup_s
            done = 0
            while done < WARMUP_CALLS or clock() < warm_until:
                await _call(backend, requests[done % len(requests)], "warm-up")
                done += 1
            latencies = []
            correct = 0
            cpu_start = cpu_time()
            for i, (request, label) in enumerate(zip(requests, labels, strict=True)):
                start = clock()
                result = await _call(backend, request, f"sample {i}")
                latencies.append(clock() - start)
                correct += result.extra.get("label") == label
            cpu_s = cpu_time() - cpu_start
            latencies.sort()
            figures.append(BenchFigure(
                backend=backend.name,
                model=model,
                p50_ms=_percentile(latencies, 0.50) * 1000,
                p95_ms=_percentile(latencies, 0.95) * 1000,
                accuracy=correct / len(labels),
                mj_per_inference=cpu_s * watts * 1000 / len(labels),
                samples=len(labels),
                measured_ms=now_ms(),
            ))
    return figures


def store_bench(db: Database, figures: Iterable[BenchFigure]) -> None:
    """Keep ``figures``, replacing earlier ones for the same backend and model."""
    with db.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO ai_bench (backend, model, p50_ms, p95_ms, accuracy, "
            "mj_per_inference, samples, measured_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(f.backend, f.model, f.p50_ms, f.p95_ms, f.accuracy, f.mj_per_inference,
              f.samples, f.measured_ms) for f in figures],
        )


def load_bench(db: Database) -> dict[tuple[str, str], BenchFigure]:
    """The stored figures by ``(backend, model)``."""
    rows = db.conn.execute(
        "SELECT backend, model, p50_ms, p95_ms, accuracy, mj_per_inference, samples, "
        "measured_ms FROM ai_bench ORDER BY backend, model"
    )
    return {(row[0], row[1]): BenchFigure(*row) for row in rows}


async def _call(backend: Backend, request: InferRequest, what: str) -> Any:
    try:
        return await backend.infer(request)
    except InferenceError as exc:
        raise InferenceError(
            exc.code, f"{backend.name} ({request.model}), {what}: {exc.detail}"
        ) from None


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values: a latency some call really had."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
