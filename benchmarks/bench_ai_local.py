"""Local inference overhead: ``LocalTflite.infer`` against a raw ``invoke()`` of the same model.

Target (issue 5): local inference through the router costs at most 30 µs
(median) more than a raw invoke of the same model. This script measures the
backend's share of it, for each shipped model: the raw floor is
``set_tensor`` + ``invoke`` + ``get_tensor`` on a second interpreter of the
same file with an input already in the tensor's type; ours is ``await
backend.infer(request)`` with the sample as a list of floats, as a request
arrives (conversion, checks, quantization and the result included). The two
alternate call by call, so drift hits both alike. It also shows why small
models run inline: the same backend forced into its executor.

    python benchmarks/bench_ai_local.py [--rounds 3000] [--json]

:func:`measure_local` takes anything with ``async infer(request)``, so the
router-level figure reuses it with the router in place of the backend.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from _common import Report, Target

from agent.ai.backend import InferRequest
from agent.ai.local import LocalTflite
from agent.ai.models import holdout, model_catalog

OVERHEAD_TARGET_US = 30.0


def raw_interpreter(model: str) -> Any:
    """A LiteRT interpreter of the catalog's ``model``, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_catalog()[model].file.read_bytes())
    interpreter.allocate_tensors()
    return interpreter


def raw_input(interpreter: Any, sample: list[float]) -> Any:
    """``sample`` in the input tensor's type and shape (quantized for an int8 model)."""
    import numpy as np

    detail = interpreter.get_input_details()[0]
    x = np.asarray(sample, dtype=np.float32).reshape(detail["shape"])
    scale, zero_point = detail["quantization"]
    if scale:
        limits = np.iinfo(detail["dtype"])
        x = np.clip(np.rint(x / scale) + zero_point, limits.min, limits.max)
    return x.astype(detail["dtype"])


async def measure_local(backend: Any, raw: Any, *, model: str, sample: list[float],
                        rounds: int = 3000, warmup: int = 200) -> dict[str, Any]:
    """Median µs of ``await backend.infer`` and of a raw invoke, alternating; and the gap.

    ``backend`` is anything with ``async infer(InferRequest)`` (a backend or
    the router); ``raw`` an interpreter of the same model.
    """
    x = raw_input(raw, sample)
    in_index = raw.get_input_details()[0]["index"]
    out_index = raw.get_output_details()[0]["index"]
    request = InferRequest(model, inputs=sample)
    clock = time.perf_counter
    raw_s, ours_s = [], []
    for i in range(warmup + rounds):
        start = clock()
        raw.set_tensor(in_index, x)
        raw.invoke()
        raw.get_tensor(out_index)
        middle = clock()
        await backend.infer(request)
        end = clock()
        if i >= warmup:
            raw_s.append(middle - start)
            ours_s.append(end - middle)
    raw_us = statistics.median(raw_s) * 1e6
    ours_us = statistics.median(ours_s) * 1e6
    return {"model": model, "raw_us": raw_us, "infer_us": ours_us,
            "overhead_us": ours_us - raw_us, "rounds": rounds,
            "inline": getattr(backend, "runs_inline", None)}


async def measure_all(rounds: int) -> list[dict[str, Any]]:
    inputs, _ = holdout()
    results = []
    for name, info in model_catalog().items():
        raw = raw_interpreter(name)
        backend = LocalTflite(f"local:{name}", info)
        forced = LocalTflite(f"local:{name}", info, inline_below_ms=0.0)
        try:
            figures = await measure_local(backend, raw, model=name, sample=inputs[0],
                                          rounds=rounds)
            hop = await measure_local(forced, raw, model=name, sample=inputs[0],
                                      rounds=max(200, rounds // 5))
        finally:
            backend.close()
            forced.close()
        figures["median_invoke_us"] = backend.median_invoke_ms * 1000
        figures["executor_overhead_us"] = hop["overhead_us"]
        print(f"{name}: raw {figures['raw_us']:.2f} µs, infer {figures['infer_us']:.2f} µs "
              f"({'inline' if figures['inline'] else 'executor'}), executor forced "
              f"{hop['infer_us']:.2f} µs", file=sys.stderr)
        results.append(figures)
    return results


def build_report(results: list[dict[str, Any]]) -> Report:
    report = Report("bench_ai_local")
    for r in results:
        report.targets.append(Target(
            name=f"local infer overhead ({r['model']})", value=r["overhead_us"], unit="µs",
            target=OVERHEAD_TARGET_US, compare="<=", judged="value", floor=r["raw_us"],
            note=f"{'inline' if r['inline'] else 'executor'}; executor forced: "
                 f"+{r['executor_overhead_us']:.1f} µs",
        ))
    report.details["models"] = results
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000, help="measured calls per model")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    results = asyncio.run(measure_all(args.rounds))

    def lines() -> Any:
        for r in results:
            yield (f"{r['model']}: raw invoke {r['raw_us']:.2f} µs, LocalTflite.infer "
                   f"{r['infer_us']:.2f} µs ({'inline' if r['inline'] else 'executor'}, "
                   f"median invoke {r['median_invoke_us']:.2f} µs); the executor hop alone "
                   f"would add {r['executor_overhead_us']:.1f} µs")

    build_report(results).print(args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
