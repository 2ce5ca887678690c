"""The local TFLite backend: real models under real LiteRT, checked inputs, inline or executor."""

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.ai.backend import LOCAL, InferenceError, InferRequest
from agent.ai.local import LocalTflite
from agent.ai.models import holdout, model_catalog

REPO = Path(__file__).resolve().parents[2]
MODELS = ("digits-mlp", "digits-cnn")


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the jobs it was given."""

    def __init__(self, workers: int = 1):
        super().__init__(max_workers=workers)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def backend_for(model: str, **kwargs) -> LocalTflite:
    return LocalTflite(f"local:{model}", model_catalog()[model], **kwargs)


@pytest.mark.parametrize("model", MODELS)
async def test_holdout_accuracy_through_the_backend_equals_the_catalog_figure(model):
    backend = backend_for(model)
    inputs, labels = holdout()
    try:
        correct = 0
        for x, label in zip(inputs, labels, strict=True):
            result = await backend.infer(InferRequest(model, inputs=x))
            correct += result.extra["label"] == label
    finally:
        backend.close()
    assert correct / len(labels) == model_catalog()[model].holdout_accuracy


@pytest.mark.parametrize("model", MODELS)
async def test_a_batch_gives_the_labels_of_single_samples(model):
    backend = backend_for(model)
    inputs, _ = holdout()
    try:
        singles = [(await backend.infer(InferRequest(model, inputs=x))).extra["label"]
                   for x in inputs[:40]]
        batch = await backend.infer(InferRequest(model, inputs=inputs[:40]))
        again = await backend.infer(InferRequest(model, inputs=inputs[0]))
    finally:
        backend.close()
    assert batch.extra["label"] == singles
    assert len(batch.outputs) == 40 and all(len(row) == 10 for row in batch.outputs)
    assert again.extra["label"] == singles[0]  # resized back to one sample


async def test_int8_outputs_are_dequantized_probabilities():
    backend = backend_for("digits-cnn")
    inputs, labels = holdout()
    try:
        result = await backend.infer(InferRequest("digits-cnn", inputs=inputs[0]))
    finally:
        backend.close()
    assert result.backend == "local:digits-cnn" and result.latency_ms > 0
    assert all(0.0 <= p <= 1.0 for p in result.outputs)
    assert sum(result.outputs) == pytest.approx(1.0, abs=0.05)
    assert result.outputs.index(max(result.outputs)) == result.extra["label"] == labels[0]


@pytest.mark.parametrize(("inputs", "says"), [
    ([0.5] * 63, "shape [63]"),
    ([[0.5] * 8] * 8, "shape [8, 8]"),
    ([["a"] * 64], "must be numbers"),
    ([True] * 64, "must be numbers, got bool"),
    ([0.5] * 63 + [None], "must be numbers"),
    ([[0.5] * 64, [0.5] * 3], "not a regular array"),
    ([0.5] * 5 + [float("nan")] + [0.5] * 58, "NaN, infinity or a value beyond float32"),
    ([[0.5] * 64, [0.5] * 63 + [float("inf")]], "(at [1, 63])"),
    (None, "no inputs"),
])
async def test_wrong_inputs_are_clear_errors(inputs, says):
    backend = backend_for("digits-cnn")
    try:
        with pytest.raises(InferenceError) as caught:
            await backend.infer(InferRequest("digits-cnn", inputs=inputs))
        # The backend still works afterwards.
        ok = await backend.infer(InferRequest("digits-cnn", inputs=[0.5] * 64))
    finally:
        backend.close()
    assert caught.value.code == "bad_input"
    assert says in caught.value.detail
    assert len(ok.outputs) == 10


async def test_large_float32_values_pass_and_values_beyond_float32_are_refused():
    backend = backend_for("digits-mlp")
    try:
        result = await backend.infer(InferRequest("digits-mlp", inputs=[3e38] * 64))
        with pytest.warns(RuntimeWarning), pytest.raises(InferenceError) as caught:
            await backend.infer(InferRequest("digits-mlp", inputs=[0.0] * 63 + [1e39]))
    finally:
        backend.close()
    assert len(result.outputs) == 10  # their float32 sum would overflow; the check's does not
    assert caught.value.code == "bad_input" and "beyond float32 (at [0, 63])" in str(caught.value)


async def test_text_and_other_models_are_refused():
    backend = backend_for("digits-mlp")
    try:
        with pytest.raises(InferenceError) as text:
            await backend.infer(InferRequest("digits-mlp", text="seven"))
        with pytest.raises(InferenceError) as other:
            await backend.infer(InferRequest("digits-cnn", inputs=[0.0] * 64))
    finally:
        backend.close()
    assert text.value.code == "bad_input" and "not text" in text.value.detail
    assert other.value.code == "unknown_model" and "'digits-cnn'" in other.value.detail


async def test_missing_model_file_is_unavailable_with_the_fix(tmp_path):
    info = dataclasses.replace(model_catalog()["digits-mlp"], file=tmp_path / "gone.tflite")
    for backend in (LocalTflite("local:gone", tmp_path / "gone.tflite"),
                    LocalTflite("local:digits-mlp", info)):
        with pytest.raises(InferenceError) as caught:
            await backend.infer(InferRequest(backend.models[0], inputs=[0.0] * 64))
        backend.close()
        assert caught.value.code == "unavailable"
        assert "gone.tflite" in caught.value.detail and "make_models.py" in caught.value.detail


async def test_a_file_that_is_no_model_or_not_the_catalogued_one_is_a_bad_model(tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer" * 64)
    swapped = dataclasses.replace(model_catalog()["digits-mlp"],
                                  file=model_catalog()["digits-cnn"].file)
    cases = [(LocalTflite("local:junk", tmp_path / "junk.tflite"), "not a usable TFLite model"),
             (LocalTflite("local:digits-mlp", swapped), "SHA-256 differs")]
    for backend, says in cases:
        with pytest.raises(InferenceError) as caught:
            await backend.infer(InferRequest(backend.models[0], inputs=[0.0] * 64))
        backend.close()
        assert caught.value.code == "bad_model" and says in caught.value.detail


async def test_missing_runtime_is_unavailable_with_install_hint_and_remembered():
    backend = backend_for("digits-mlp", runtimes=("igris_no_such_runtime.interpreter",))
    try:
        with pytest.raises(InferenceError) as first:
            await backend.infer(InferRequest("digits-mlp", inputs=[0.0] * 64))
        with pytest.raises(InferenceError) as second:
            backend.load()
    finally:
        backend.close()
    assert first.value.code == "unavailable"
    assert "igris_no_such_runtime" in first.value.detail
    assert "pip install 'igris-agent[ai]'" in first.value.detail
    assert str(second.value) == str(first.value)
    assert not backend.loaded


async def test_falls_back_to_the_next_runtime():
    backend = backend_for(
        "digits-mlp", runtimes=("igris_no_such_runtime.interpreter", "ai_edge_litert.interpreter"))
    try:
        result = await backend.infer(InferRequest("digits-mlp", inputs=holdout()[0][0]))
    finally:
        backend.close()
    assert backend.runtime == "ai_edge_litert.interpreter"
    assert result.extra["label"] == holdout()[1][0]


def test_agent_modules_load_without_numpy_or_a_runtime():
    code = ("import sys, agent.ai.local, agent.ai.bench, agent.ai.models, agent.cli.main\n"
            "print(sorted(m for m in ('numpy', 'ai_edge_litert', 'tflite_runtime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=REPO, timeout=60).stdout
    assert json.loads(out.replace("'", '"')) == []


async def test_a_fast_model_runs_inline_from_its_measured_latency():
    executor = CountingExecutor()
    backend = backend_for("digits-mlp", executor=executor)
    try:
        backend.load()
        for x in holdout()[0][:50]:
            await backend.infer(InferRequest("digits-mlp", inputs=x))
    finally:
        executor.shutdown()
    assert 0 < backend.median_invoke_ms < 1.0
    assert backend.runs_inline
    assert executor.submitted == 0


async def test_a_fast_model_never_starts_a_thread_of_its_own():
    backend = backend_for("digits-mlp")  # loads in the loop's default executor
    try:
        for x in holdout()[0][:20]:
            await backend.infer(InferRequest("digits-mlp", inputs=x))
        threads = [t.name for t in threading.enumerate()]
    finally:
        backend.close()
    assert backend.runs_inline
    assert not any(name.startswith("igris-digits-mlp") for name in threads)


async def test_a_model_slower_than_the_threshold_runs_in_the_executor():
    executor = CountingExecutor()
    # No model is faster than 0 ms: everything counts as slow.
    backend = backend_for("digits-mlp", executor=executor, inline_below_ms=0.0)
    requests = [InferRequest("digits-mlp", inputs=x) for x in holdout()[0][:20]]
    try:
        backend.load()
        results = [await backend.infer(r) for r in requests]
    finally:
        executor.shutdown()
    inline = backend_for("digits-mlp", executor=executor)
    inline.load()
    assert not backend.runs_inline and inline.runs_inline
    assert executor.submitted == 20
    assert [r.outputs for r in results] == [(await inline.infer(r)).outputs for r in requests]


async def test_a_big_batch_of_a_fast_model_goes_to_the_executor():
    executor = CountingExecutor()
    backend = backend_for("digits-mlp", executor=executor, inline_below_ms=0.05)
    inputs, _ = holdout()
    try:
        backend.load()
        await backend.infer(InferRequest("digits-mlp", inputs=inputs[0]))
        assert executor.submitted == 0
        await backend.infer(InferRequest("digits-mlp", inputs=inputs))
    finally:
        executor.shutdown()
    assert executor.submitted == 1


async def test_executor_call_past_its_deadline_is_a_timeout():
    backend = backend_for("digits-cnn", inline_below_ms=0.0)
    try:
        backend.load()
        with pytest.raises(InferenceError) as caught:
            await backend.infer(InferRequest("digits-cnn", inputs=[0.0] * 64, deadline_ms=0))
    finally:
        backend.close()
    assert caught.value.code == "timeout"


@pytest.mark.parametrize("inline_below_ms", [0.0, 1.0])
async def test_concurrent_calls_are_serialized_and_each_gets_its_own_answer(inline_below_ms):
    inputs, _ = holdout()
    reference = backend_for("digits-cnn")
    expected = [(await reference.infer(InferRequest("digits-cnn", inputs=x))).outputs
                for x in inputs[:60]]
    reference.close()
    # Many worker threads, so only the backend's own lock keeps them off one interpreter;
    # batches go to the executor while single samples may run inline, side by side.
    executor = ThreadPoolExecutor(max_workers=8)
    backend = backend_for("digits-cnn", executor=executor, inline_below_ms=inline_below_ms)
    try:
        requests = [InferRequest("digits-cnn", inputs=x) for x in inputs[:60]]
        batches = [InferRequest("digits-cnn", inputs=inputs[:60]) for _ in range(6)]
        results = await asyncio.gather(*(backend.infer(r) for r in requests + batches))
    finally:
        executor.shutdown()
    assert [r.outputs for r in results[:60]] == expected
    assert all(r.outputs == expected for r in results[60:])


def test_backend_describes_itself_and_its_accuracy(tmp_path):
    catalog = model_catalog()
    backend = backend_for("digits-mlp")
    measured = backend_for("digits-mlp", measured_accuracy=0.5)
    by_path = LocalTflite("local:mine", tmp_path / "mine.tflite")
    assert (backend.name, backend.kind, tuple(backend.models)) == (
        "local:digits-mlp", LOCAL, ("digits-mlp",))
    assert backend.accuracy("digits-mlp") == catalog["digits-mlp"].holdout_accuracy
    assert backend.accuracy("digits-cnn") is None
    assert measured.accuracy("digits-mlp") == 0.5
    assert tuple(by_path.models) == ("mine",) and by_path.accuracy("mine") is None
    assert not backend.loaded and not backend.runs_inline
