"""The TFLite models that ship with Igris, and the held-out set they are judged on.

``tools/make_models.py`` makes them from scikit-learn's digits set and writes
``models/``, which ships inside the wheel as the package ``agent.models``
(like ``targets/`` as ``agent.profiles``), so an installed agent finds them
without the repository. The catalog (``models.json``) says what each model
expects and how accurate it was on the held-out set when it was made; the
bench re-measures that figure on the device::

    >>> catalog = model_catalog()
    >>> catalog["digits-mlp"].input_shape
    (1, 64)
    >>> inputs, labels = holdout()
    >>> len(inputs) == len(labels) == catalog["digits-mlp"].holdout_count
    True

Only the standard library is used here: listing the models must work on a
device without a TFLite runtime.
"""

from __future__ import annotations

import importlib.resources
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigInvalid

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:
    from importlib.abc import Traversable

CATALOG = "models.json"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Shape, element type and quantization of a model's input or output tensor.

    ``scale`` is 0.0 for a float tensor; for a quantized one, real value =
    ``(q - zero_point) * scale``.
    """

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One shipped model as the catalog describes it.

    ``file`` is where its flatbuffer is (a path in a source checkout or an
    installed wheel); ``role`` is ``device`` (small and fast) or ``peer``
    (stronger, for a device that serves others); ``holdout_accuracy`` is
    ``holdout_correct / holdout_count``, measured with LiteRT when made.
    """

    name: str
    file: Traversable
    role: str
    description: str
    input: TensorSpec
    output: TensorSpec
    holdout_correct: int
    holdout_count: int
    holdout_accuracy: float
    size_bytes: int
    sha256: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.input.shape


def model_catalog() -> dict[str, ModelInfo]:
    """Every shipped model by name, read from ``models.json``.

    Raises :class:`ConfigInvalid` naming the file when the catalog is missing
    or malformed (a broken install, or ``models/`` never made).
    """
    root = _shipped_models()
    data = _read_json(root / CATALOG)
    try:
        count = int(data["holdout"]["count"])
        return {
            name: ModelInfo(
                name=name,
                file=root / entry["file"],
                role=entry["role"],
                description=entry["description"],
                input=_tensor(entry["input"]),
                output=_tensor(entry["output"]),
                holdout_correct=int(entry["holdout_correct"]),
                holdout_count=count,
                holdout_accuracy=float(entry["holdout_accuracy"]),
                size_bytes=int(entry["bytes"]),
                sha256=entry["sha256"],
            )
            for name, entry in data["models"].items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigInvalid(
            f"{root / CATALOG}: not a model catalog ({type(exc).__name__}: {exc}); "
            "remake it with tools/make_models.py"
        ) from None


def holdout() -> tuple[list[list[float]], list[int]]:
    """The held-out inputs (64 pixels in 0..1 each) and their labels (digits 0-9)."""
    root = _shipped_models()
    name = _read_json(root / CATALOG).get("holdout", {}).get("file", "holdout.json")
    data = _read_json(root / name)
    inputs, labels = data.get("inputs"), data.get("labels")
    if not isinstance(inputs, list) or not isinstance(labels, list) or len(inputs) != len(labels):
        raise ConfigInvalid(f"{root / name}: expected equally long 'inputs' and 'labels' lists")
    return inputs, labels


def _tensor(entry: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        shape=tuple(int(d) for d in entry["shape"]),
        dtype=str(entry["dtype"]),
        scale=float(entry["scale"]),
        zero_point=int(entry["zero_point"]),
    )


def _read_json(resource: Traversable) -> dict[str, Any]:
    try:
        data = json.loads(resource.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigInvalid(
            f"{resource}: not found; the models ship with igris-agent (reinstall it), "
            "or, in a source checkout, make them with tools/make_models.py"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigInvalid(f"{resource}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigInvalid(f"{resource}: expected a JSON object")
    return data


def _shipped_models() -> Traversable:
    try:
        return importlib.resources.files("agent.models")
    except ModuleNotFoundError:
        # setuptools maps models/ to agent.models only when installing; in an
        # uninstalled source checkout models/ sits beside agent/.
        return Path(__file__).resolve().parents[2] / "models"
