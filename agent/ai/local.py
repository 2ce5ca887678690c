"""The ``local`` backend: one TFLite model run on this device.

The runtime is imported only when the model is first loaded, ``ai_edge_litert``
(LiteRT) first and ``tflite_runtime`` as the fallback, so the agent starts on
a device that has neither: requests then fail with
``InferenceError("unavailable", <how to install>)`` and the router goes
elsewhere. numpy comes with either runtime and is imported the same way.

Small models are faster than a trip to an executor thread (the shipped
digits perceptron answers in a few microseconds; a thread hop costs tens),
so each backend measures its own invoke time and runs a request inline on
the event loop when the expected time is below ``inline_below_ms``, and in
an executor otherwise. One interpreter is not thread-safe: a lock
serialises every use of it, and an inline call that finds the interpreter
busy goes to the executor instead of blocking the loop::

    >>> backend = LocalTflite("local:digits-mlp", model_catalog()["digits-mlp"])
    >>> result = await backend.infer(InferRequest("digits-mlp", inputs=[0.0] * 64))
    >>> result.extra["label"], len(result.outputs)
    (4, 10)

Inputs are real values shaped like one sample (``[64]`` for the digits
models) or a batch of them (``[n, 64]``); for an int8 model they are
quantized with the model's scale and zero point, and outputs dequantized.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.ai.backend import LOCAL, InferenceError, InferRequest, InferResult
from agent.ai.models import ModelInfo

if TYPE_CHECKING:
    import numpy as np

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
INSTALL_HINT = (
    "install LiteRT with `pip install 'igris-agent[ai]'` (ai-edge-litert), "
    "or tflite-runtime (which needs numpy<2)"
)
# Invokes measured when the model loads, so the first request already runs
# where it should; then the median of the last LATENCY_WINDOW calls decides,
# recomputed every DECIDE_EVERY calls (a sort per call would cost more than
# the small model).
WARMUP_INVOKES = 5
LATENCY_WINDOW = 31
DECIDE_EVERY = 16


@dataclass(frozen=True, slots=True)
class _Tensors:
    """What the hot path needs to know about the model's tensors, looked up once at load."""

    input_index: int
    output_index: int
    sample: tuple[int, ...]  # one sample's shape: the input shape without the batch
    dtype: Any  # the input tensor's numpy type
    resizable: bool  # whether the batch dimension may change
    in_scale: float  # 0.0 for a float input
    in_zero: int
    in_min: int
    in_max: int
    out_scale: Any  # numpy float32; 0.0 for a float output
    out_zero: Any

    @classmethod
    def of(cls, interpreter: Any, numpy: Any) -> _Tensors:
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        in_scale, in_zero = inp["quantization"]
        out_scale, out_zero = out["quantization"]
        limits = numpy.iinfo(inp["dtype"]) if in_scale else None
        return cls(
            input_index=inp["index"],
            output_index=out["index"],
            sample=tuple(int(d) for d in inp["shape"][1:]),
            dtype=numpy.dtype(inp["dtype"]),
            resizable=int(inp["shape_signature"][0]) == -1,
            in_scale=float(in_scale),
            in_zero=int(in_zero),
            in_min=int(limits.min) if limits else 0,
            in_max=int(limits.max) if limits else 0,
            out_scale=numpy.float32(out_scale),
            out_zero=numpy.float32(out_zero),
        )


class LocalTflite:
    """A TFLite model on this device, behind the :class:`~agent.ai.backend.Backend` interface.

    ``model`` is a catalog entry (:func:`~agent.ai.models.model_catalog`) or
    the path of a ``.tflite`` file (served under its file name's stem, with
    no accuracy known until measured). ``executor`` runs the slow models;
    by default the backend has its own single worker thread, started only
    when a request first needs it, so requests queue in order there instead
    of holding threads of a shared pool while they wait for the interpreter
    (:meth:`close` stops it). ``runtimes`` are
    the modules tried for ``Interpreter``, in order. ``measured_accuracy`` is
    the bench's figure for this backend (``agent.ai.bench.load_bench``); it
    wins over the catalog's.
    """

    kind = LOCAL

    def __init__(
        self,
        name: str,
        model: ModelInfo | str | Path,
        *,
        executor: Executor | None = None,
        inline_below_ms: float = 1.0,
        measured_accuracy: float | None = None,
        runtimes: Sequence[str] = RUNTIMES,
    ):
        self.name = name
        self.inline_below_ms = inline_below_ms
        self._info = model if isinstance(model, ModelInfo) else None
        self._model = model.name if isinstance(model, ModelInfo) else Path(model).stem
        self._file = model.file if isinstance(model, ModelInfo) else Path(model)
        self._measured_accuracy = measured_accuracy
        self._runtimes = tuple(runtimes)
        self._executor = executor
        self._own_executor: Executor | None = None
        self._lock = threading.Lock()
        self._failure: InferenceError | None = None
        self._ready = False  # set last in load(), so no request sees a half-loaded model
        self._np: Any = None
        self._interpreter: Any = None
        self._runtime = ""
        self._tensors: _Tensors | None = None
        self._batch = 1
        # Per-sample seconds of recent calls; only the event loop's thread writes
        # it after load() (executor calls report back through their future).
        self._times: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._since_decision = 0
        self._median_s = 0.0

    # ------------------------------------------------------------------ Backend

    @property
    def models(self) -> Sequence[str]:
        return (self._model,)

    def accuracy(self, model: str) -> float | None:
        """The bench's figure when given, else the catalog's held-out accuracy."""
        if model != self._model:
            return None
        if self._measured_accuracy is not None:
            return self._measured_accuracy
        return self._info.holdout_accuracy if self._info else None

    async def infer(self, request: InferRequest) -> InferResult:
        """Run one sample or a batch; outputs are class scores, ``extra["label"]`` the argmax.

        ``deadline_ms`` bounds a call that goes to the executor; an inline call
        takes less than ``inline_below_ms`` by construction.
        """
        start = time.perf_counter()
        if request.model != self._model:
            raise InferenceError(
                "unknown_model", f"{self.name} serves {self._model!r}, not {request.model!r}"
            )
        if not self._ready:
            # The given executor or the loop's default: loading (imports included) takes
            # long, once, and needs no thread of the backend's own.
            await asyncio.get_running_loop().run_in_executor(self._executor, self.load)
        x = self._prepare(request)
        count = x.shape[0]
        if self._median_s * count * 1000 < self.inline_below_ms and self._lock.acquire(
            blocking=False
        ):
            try:
                out, seconds = self._invoke_locked(x)
            finally:
                self._lock.release()
        else:
            out, seconds = await self._invoke_in_executor(x, request.deadline_ms)
        self._record(seconds / count)
        return self._result(out, count, start)

    # ------------------------------------------------------------------ state

    @property
    def loaded(self) -> bool:
        return self._ready

    @property
    def runtime(self) -> str:
        """The module the interpreter came from ('' until loaded)."""
        return self._runtime

    @property
    def median_invoke_ms(self) -> float:
        """Median time of one sample's invoke (with its tensor copies) over recent calls."""
        return self._median_s * 1000

    @property
    def runs_inline(self) -> bool:
        """Whether a one-sample request runs on the event loop (from measured latency)."""
        return self.loaded and self._median_s * 1000 < self.inline_below_ms

    def load(self) -> None:
        """Import the runtime, load the model, allocate tensors and time a few invokes.

        Blocking (milliseconds): ``infer`` calls it in the executor on first
        use; the runtime may call it at start to take that cost up front.
        Idempotent; a failure is remembered and raised again, since neither a
        missing runtime nor a missing file appears without a restart.
        """
        with self._lock:
            if self._ready:
                return
            if self._failure is None:
                try:
                    self._load_locked()
                except InferenceError as exc:
                    self._failure = exc
            if self._failure is not None:
                # A fresh exception each time: re-raising one object grows its traceback.
                raise InferenceError(self._failure.code, self._failure.detail)

    def close(self) -> None:
        """Stop the backend's own worker thread, if it started one."""
        if self._own_executor is not None:
            self._own_executor.shutdown(wait=True)
            self._own_executor = None

    # ------------------------------------------------------------------ loading

    def _load_locked(self) -> None:
        try:
            import numpy
        except ImportError:
            raise InferenceError("unavailable", f"numpy is not installed; {INSTALL_HINT}") from None
        try:
            content = self._file.read_bytes()
        except OSError as exc:
            raise InferenceError(
                "unavailable",
                f"cannot read model file {str(self._file)!r} ({exc.strerror or exc}); the models "
                "ship with igris-agent, or make them with tools/make_models.py",
            ) from None
        if self._info is not None and hashlib.sha256(content).hexdigest() != self._info.sha256:
            raise InferenceError(
                "bad_model",
                f"{str(self._file)!r} is not the {self._model!r} the catalog describes "
                "(SHA-256 differs); reinstall, or remake models/ with tools/make_models.py",
            )
        interpreter, runtime = self._make_interpreter(content)
        self._np = numpy
        self._interpreter = interpreter
        self._runtime = runtime
        self._tensors = tensors = _Tensors.of(interpreter, numpy)
        self._batch = int(interpreter.get_input_details()[0]["shape"][0])
        zeros = numpy.zeros((self._batch, *tensors.sample), dtype=tensors.dtype)
        for _ in range(WARMUP_INVOKES):
            self._times.append(self._invoke_locked(zeros)[1] / self._batch)
        self._median_s = _median(self._times)
        self._ready = True

    def _make_interpreter(self, content: bytes) -> tuple[Any, str]:
        problems = []
        for module in self._runtimes:
            try:
                interpreter = importlib.import_module(module).Interpreter(model_content=content)
            except ValueError as exc:  # the runtime loaded; the flatbuffer is bad
                raise InferenceError(
                    "bad_model", f"{str(self._file)!r} is not a usable TFLite model ({exc})"
                ) from None
            except Exception as exc:  # any other failure of this runtime: try the next one
                problems.append(f"{module}: {type(exc).__name__}: {exc}")
                continue
            try:
                interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise InferenceError(
                    "bad_model", f"{str(self._file)!r}: cannot allocate tensors ({exc})"
                ) from None
            return interpreter, module
        raise InferenceError(
            "unavailable", f"no usable TFLite runtime ({'; '.join(problems)}); {INSTALL_HINT}"
        )

    # ------------------------------------------------------------------ running

    def _prepare(self, request: InferRequest) -> np.ndarray:
        """The request's inputs as the input tensor wants them, or a clear ``bad_input``."""
        np, t = self._np, self._tensors
        assert t is not None  # loaded
        if request.text is not None:
            raise InferenceError(
                "bad_input", f"{self._model!r} takes numbers in 'inputs', not text"
            )
        if request.inputs is None:
            raise InferenceError("bad_input", f"no inputs; {self._model!r} takes {self._wants()}")
        try:
            x = np.asarray(request.inputs)
        except (ValueError, TypeError) as exc:
            raise InferenceError(
                "bad_input", f"inputs are not a regular array of numbers ({exc})"
            ) from None
        if x.dtype.kind not in "iuf":
            raise InferenceError(
                "bad_input", f"inputs must be numbers, got {x.dtype.name} values"
            )
        if x.shape == t.sample:
            x = x.reshape((1, *t.sample))
        elif x.shape[1:] != t.sample or x.shape[0] < 1:
            raise InferenceError(
                "bad_input", f"inputs have shape {list(x.shape)}; {self._model!r} takes "
                f"{self._wants()}",
            )
        elif x.shape[0] != self._batch and not t.resizable:
            raise InferenceError(
                "bad_input", f"{self._model!r} takes batches of exactly {self._batch}"
            )
        floats = x.dtype.kind == "f"
        x = x.astype(np.float32, copy=False)  # beyond float32's range becomes infinity
        # A sum (in float64, which float32 values cannot overflow) is cheaper than a
        # test per element, and is NaN or infinite exactly when an element is.
        if floats and not math.isfinite(np.add.reduce(x, axis=None, dtype=np.float64)):
            where = [int(i) for i in np.argwhere(~np.isfinite(x))[0]]
            raise InferenceError(
                "bad_input", f"inputs hold NaN, infinity or a value beyond float32 (at {where})"
            )
        if not t.in_scale:
            return x.astype(t.dtype, copy=False)
        # The arithmetic of tools/make_models.py (np.rint(x / scale) + zero point,
        # clipped), in place, so the accuracy measured there holds to the sample.
        q = x / t.in_scale
        np.rint(q, out=q)
        q += t.in_zero
        np.maximum(q, t.in_min, out=q)
        np.minimum(q, t.in_max, out=q)
        return q.astype(t.dtype)

    def _wants(self) -> str:
        assert self._tensors is not None
        sample = list(self._tensors.sample)
        return f"one sample shaped {sample} or a batch shaped {['n', *sample]}"

    def _invoke_locked(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """set_tensor, invoke, get_tensor; the caller holds the lock. Returns output and seconds."""
        interpreter, t = self._interpreter, self._tensors
        assert t is not None
        start = time.perf_counter()
        try:
            if x.shape[0] != self._batch:
                interpreter.resize_tensor_input(t.input_index, list(x.shape))
                interpreter.allocate_tensors()
                self._batch = x.shape[0]
            interpreter.set_tensor(t.input_index, x)
            interpreter.invoke()
            out = interpreter.get_tensor(t.output_index)
        except (RuntimeError, ValueError) as exc:
            raise InferenceError("failed", f"{self._model!r}: {exc}") from None
        return out, time.perf_counter() - start

    def _invoke_serialized(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        with self._lock:
            return self._invoke_locked(x)

    async def _invoke_in_executor(
        self, x: np.ndarray, deadline_ms: float | None
    ) -> tuple[np.ndarray, float]:
        future = asyncio.get_running_loop().run_in_executor(
            self._pool(), self._invoke_serialized, x
        )
        if deadline_ms is None:
            return await future
        try:
            return await asyncio.wait_for(future, deadline_ms / 1000)
        except asyncio.TimeoutError:
            raise InferenceError(
                "timeout", f"{self._model!r} did not answer within {deadline_ms:g} ms"
            ) from None

    def _pool(self) -> Executor:
        if self._executor is not None:
            return self._executor
        if self._own_executor is None:
            from concurrent.futures import ThreadPoolExecutor  # only once a model is slow

            self._own_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"igris-{self._model}"
            )
        return self._own_executor

    def _record(self, seconds: float) -> None:
        self._times.append(seconds)
        self._since_decision += 1
        if self._since_decision >= DECIDE_EVERY:
            self._since_decision = 0
            self._median_s = _median(self._times)

    def _result(self, out: np.ndarray, count: int, start: float) -> InferResult:
        t = self._tensors
        assert t is not None
        labels = out.argmax(axis=-1)  # before dequantizing: the scale keeps the order
        if t.out_scale:
            out = out.astype(self._np.float32)
            out -= t.out_zero
            out *= t.out_scale
        if count == 1:
            outputs, label = out[0].tolist(), int(labels[0])
        else:
            outputs, label = out.tolist(), labels.tolist()
        return InferResult(
            outputs=outputs,
            backend=self.name,
            latency_ms=(time.perf_counter() - start) * 1000,
            extra={"label": label},
        )


def _median(values: Sequence[float]) -> float:
    # Not statistics.median: that module pulls in fractions and decimal, about
    # 0.4 MB of an agent's resident memory for one sort.
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
