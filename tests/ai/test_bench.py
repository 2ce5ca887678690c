"""The bench: figures measured on the held-out set, stored, and printed by ``igris bench``."""

import json

import pytest

from agent.ai.backend import InferenceError
from agent.ai.bench import BenchFigure, load_bench, run_bench, store_bench
from agent.ai.local import LocalTflite
from agent.ai.models import holdout, model_catalog
from agent.cli import main
from agent.db import Database


def local_backends(**kwargs):
    return [LocalTflite(f"local:{name}", info, **kwargs) for name, info in model_catalog().items()]


async def test_bench_accuracy_equals_each_models_held_out_accuracy():
    backends = local_backends()
    try:
        figures = await run_bench(backends, holdout(), watts=6.4, warmup_s=0)
    finally:
        for backend in backends:
            backend.close()
    catalog = model_catalog()
    assert [(f.backend, f.model) for f in figures] == [
        ("local:digits-mlp", "digits-mlp"), ("local:digits-cnn", "digits-cnn")]
    for figure in figures:
        assert figure.accuracy == catalog[figure.model].holdout_accuracy
        assert figure.samples == 360
        assert 0 < figure.p50_ms <= figure.p95_ms
        assert figure.mj_per_inference > 0


async def test_energy_is_cpu_time_times_watts_per_inference():
    cpu = iter([10.0, 10.5])  # half a CPU second over the measured calls
    backend = LocalTflite("local:digits-mlp", model_catalog()["digits-mlp"])
    inputs, labels = holdout()
    try:
        (figure,) = await run_bench([backend], (inputs[:100], labels[:100]), watts=4.0,
                                    warmup_s=0, cpu_time=lambda: next(cpu), now_ms=lambda: 42)
    finally:
        backend.close()
    assert figure.mj_per_inference == pytest.approx(0.5 * 4.0 * 1000 / 100)
    assert (figure.samples, figure.measured_ms) == (100, 42)


async def test_a_failing_backend_stops_the_bench_naming_it():
    backend = LocalTflite("local:digits-mlp", model_catalog()["digits-mlp"],
                          runtimes=("igris_no_such_runtime.interpreter",))
    with pytest.raises(InferenceError) as caught:
        await run_bench([backend], holdout(), watts=1.0, warmup_s=0)
    assert caught.value.code == "unavailable"
    assert "local:digits-mlp (digits-mlp), warm-up" in caught.value.detail


def test_figures_are_stored_newest_per_backend_and_model(tmp_path):
    db = Database.open(tmp_path / "igris.db")
    old = BenchFigure("local:digits-mlp", "digits-mlp", 0.01, 0.02, 0.9, 0.3, 360, 1)
    new = BenchFigure("local:digits-mlp", "digits-mlp", 0.02, 0.03, 0.97, 0.2, 100, 2)
    other = BenchFigure("peer:jetson-01", "digits-cnn", 4.0, 9.0, 0.98, 0.05, 360, 2)
    store_bench(db, [old, other])
    store_bench(db, [new])
    assert load_bench(db) == {("local:digits-mlp", "digits-mlp"): new,
                              ("peer:jetson-01", "digits-cnn"): other}
    db.close()


def test_igris_bench_json_reports_and_stores_every_local_model(tmp_path, capsys):
    (tmp_path / "agent.toml").write_text('[agent]\ntarget = "rpi4"\n')
    assert main(["bench", "--root", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["target"], out["watts"], out["unavailable"]) == ("rpi4", 6.4, {})
    catalog = model_catalog()
    assert {f["model"]: f["accuracy"] for f in out["figures"]} == {
        name: info.holdout_accuracy for name, info in catalog.items()}
    db = Database.open(tmp_path / "igris.db")
    stored = load_bench(db)
    db.close()
    by_backend = {f["backend"]: f for f in out["figures"]}
    assert {backend: f.to_dict() for (backend, _), f in stored.items()} == by_backend


def test_igris_bench_one_backend_on_part_of_the_set_prints_a_table(tmp_path, capsys):
    code = main(["bench", "--root", str(tmp_path), "--backend", "local:digits-mlp",
                 "--samples", "20", "--target", "pi-zero-2w"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split() == [
        "BACKEND", "MODEL", "P50", "ms", "P95", "ms", "ACCURACY", "mJ/INF", "SAMPLES"]
    assert out.splitlines()[1].split()[:2] == ["local:digits-mlp", "digits-mlp"]
    assert out.splitlines()[1].split()[-1] == "20"
    assert "target pi-zero-2w" in out and str(tmp_path / "igris.db") in out


@pytest.mark.parametrize(("args", "says"), [
    (["--backend", "local:nope"], "no local backend named 'local:nope'"),
    (["--samples", "0"], "--samples must be 1 to 360"),
])
def test_igris_bench_refuses_unknown_backends_and_sample_counts(tmp_path, capsys, args, says):
    assert main(["bench", "--root", str(tmp_path), *args]) == 1
    assert says in capsys.readouterr().err
