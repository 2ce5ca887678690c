"""The shipped models: catalog, files, held-out set, and the size budget."""

import hashlib
from pathlib import Path

from ai_edge_litert.interpreter import Interpreter

from agent.ai.models import holdout, model_catalog

REPO = Path(__file__).resolve().parents[2]


def test_catalog_has_a_device_model_and_a_stronger_peer_model():
    catalog = model_catalog()
    assert {info.role for info in catalog.values()} == {"device", "peer"}
    device = next(i for i in catalog.values() if i.role == "device")
    peer = next(i for i in catalog.values() if i.role == "peer")
    assert (device.name, peer.name) == ("digits-mlp", "digits-cnn")
    assert peer.holdout_accuracy > device.holdout_accuracy > 0.9
    assert device.size_bytes < 10_000


def test_catalog_describes_the_files_as_they_are():
    for info in model_catalog().values():
        content = info.file.read_bytes()
        assert len(content) == info.size_bytes
        assert hashlib.sha256(content).hexdigest() == info.sha256
        assert info.holdout_accuracy == info.holdout_correct / info.holdout_count
        interpreter = Interpreter(model_content=content)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        assert info.input_shape == tuple(inp["shape"]) == (1, 64)
        assert tuple(out["shape"]) == info.output.shape == (1, 10)
        assert inp["dtype"].__name__ == info.input.dtype
        assert inp["quantization"] == (info.input.scale, info.input.zero_point)
        assert out["quantization"] == (info.output.scale, info.output.zero_point)


def test_cnn_is_int8_and_mlp_is_float():
    catalog = model_catalog()
    assert catalog["digits-cnn"].input.dtype == "int8" and catalog["digits-cnn"].input.quantized
    assert catalog["digits-mlp"].input.dtype == "float32"
    assert not catalog["digits-mlp"].input.quantized


def test_holdout_is_labelled_pixels_in_unit_range_with_every_digit():
    inputs, labels = holdout()
    assert len(inputs) == len(labels) == model_catalog()["digits-mlp"].holdout_count == 360
    assert all(len(row) == 64 and all(0.0 <= v <= 1.0 for v in row) for row in inputs)
    assert set(labels) == set(range(10))


def test_shipped_models_fit_the_one_megabyte_budget():
    total = sum(p.stat().st_size for p in (REPO / "models").iterdir() if p.is_file())
    assert total <= 1_000_000
