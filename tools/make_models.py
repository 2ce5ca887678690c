"""Make the small TFLite models Igris ships, from scikit-learn's bundled digits set.

A development tool, never a runtime dependency: it needs TensorFlow,
scikit-learn and ai-edge-litert, which the agent does not. Run it in its own
virtualenv, not the project's ``.venv``::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install "tensorflow-cpu==2.21.*" scikit-learn ai-edge-litert
    /tmp/tfvenv/bin/python tools/make_models.py          # writes models/

What it writes to ``models/`` (shipped inside the wheel as ``agent.models``):

- ``digits-mlp.tflite``: a 64-16-10 perceptron in float32, a few KB and a few
  microseconds per invoke: the model a small device runs itself.
- ``digits-cnn.tflite``: a small convolutional network quantized to int8
  (inputs and outputs too), more accurate and slower: the model a stronger
  peer serves.
- ``holdout.json``: the held-out images (64 pixels each, scaled to 0..1) and
  their labels, never seen in training; ``igris bench`` measures on them.
- ``models.json``: the catalog the agent reads (``agent/ai/models.py``): per
  model its file, tensor shapes, dtypes, quantization, size, SHA-256 and its
  held-out accuracy as measured here with LiteRT on ``holdout.json`` exactly
  as written, so the bench must reproduce it to the last sample.

Both models take the same input, a ``[1, 64]`` float32 row (the CNN reshapes
it to 8x8 itself), so a request can go to either. Everything is seeded and
TensorFlow's deterministic ops are on: running it again gives the same files
on the same versions (the catalog records them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 0
HOLDOUT_FRACTION = 0.2
PIXEL_MAX = 16.0  # the digits set's pixel values run from 0 to 16
SIZE_BUDGET = 1_000_000  # all shipped model files together, bytes


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out sets; stratified so every digit is in the held-out set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / PIXEL_MAX).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HOLDOUT_FRACTION, random_state=SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test


def train_mlp(x: np.ndarray, y: np.ndarray) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(64,), name="pixels"),
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=60, batch_size=32, verbose=0)
    return model


def train_cnn(x: np.ndarray, y: np.ndarray) -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(64,), name="pixels"),
        tf.keras.layers.Reshape((8, 8, 1)),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        tf.keras.layers.MaxPooling2D(2),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.002),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    return model


def to_tflite(model: Any, representative: np.ndarray | None = None) -> bytes:
    """Convert to a TFLite flatbuffer; with ``representative`` data, fully to int8."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        def samples() -> Any:
            for row in representative:
                yield [row.reshape(1, 64)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """Real values to the integer type a quantized tensor holds (as agent/ai/local.py does)."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero_point, info.min, info.max).astype(dtype)


def measure(content: bytes, inputs: list[list[float]], labels: list[int]) -> int:
    """How many held-out samples LiteRT classifies right, one invoke per sample."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    correct = 0
    for row, label in zip(inputs, labels, strict=True):
        x = np.asarray(row, dtype=np.float32).reshape(inp["shape"])
        if scale:
            x = quantize(x, scale, zero_point, inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return correct


def tensor_entry(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {"shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def catalog_entry(name: str, role: str, description: str, content: bytes,
                  correct: int, count: int) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return {
        "file": f"{name}.tflite", "role": role, "description": description,
        "input": tensor_entry(interpreter.get_input_details()[0]),
        "output": tensor_entry(interpreter.get_output_details()[0]),
        "holdout_correct": correct, "holdout_accuracy": correct / count,
        "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(),
    }


def write_holdout(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[list[list[float]], list[int]]:
    """One sample per line; pixels are multiples of 1/16, so 4 decimals are exact."""
    inputs = [[round(float(v), 4) for v in row] for row in x]
    labels = [int(v) for v in y]
    lines = ",\n".join(json.dumps(row, separators=(",", ":")) for row in inputs)
    path.write_text(
        '{"source":"scikit-learn digits, pixel / 16, held-out split (tools/make_models.py)",\n'
        f'"labels":{json.dumps(labels, separators=(",", ":"))},\n'
        f'"inputs":[\n{lines}\n]}}\n'
    )
    # Measure on what the file holds, read back, not on the arrays in memory.
    data = json.loads(path.read_text())
    return data["inputs"], data["labels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "models",
                        help="directory to write (default: the repository's models/)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: less noise
    import ai_edge_litert
    import sklearn
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    x_train, y_train, x_test, y_test = load_split()
    args.out.mkdir(parents=True, exist_ok=True)
    inputs, labels = write_holdout(args.out / "holdout.json", x_test, y_test)

    made = {
        "digits-mlp": ("device", "64-16-10 perceptron, float32: fast enough for any device",
                       to_tflite(train_mlp(x_train, y_train))),
        "digits-cnn": ("peer", "two 3x3 convolutions and a dense layer, int8: more accurate",
                       to_tflite(train_cnn(x_train, y_train), representative=x_train)),
    }
    models = {}
    for name, (role, description, content) in made.items():
        (args.out / f"{name}.tflite").write_bytes(content)
        correct = measure(content, inputs, labels)
        models[name] = catalog_entry(name, role, description, content, correct, len(labels))
        print(f"{name}: {len(content)} bytes, held-out accuracy {correct}/{len(labels)} "
              f"= {correct / len(labels):.4f}", file=sys.stderr)

    catalog = {
        "format": 1,
        "made_by": "tools/make_models.py",
        "versions": {"tensorflow": tf.__version__, "ai_edge_litert": ai_edge_litert.__version__,
                     "scikit_learn": sklearn.__version__, "numpy": np.__version__},
        "holdout": {"file": "holdout.json", "count": len(labels), "fraction": HOLDOUT_FRACTION,
                    "seed": SEED, "pixel_scale": f"1/{PIXEL_MAX:g}"},
        "models": models,
    }
    (args.out / "models.json").write_text(json.dumps(catalog, indent=2) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"{args.out}: {total} bytes in all (budget {SIZE_BUDGET})", file=sys.stderr)
    if total > SIZE_BUDGET:
        print("over the size budget: make the models smaller", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
