"""The wire test vectors on CPython.

``vector_check.py`` is the one portable script that runs ``vectors.json``;
``test_vectors_micropython.py`` runs the very same script on MicroPython.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "vectors.json"
SUMMARY = re.compile(r"^wire vectors: (\d+) passed, (\d+) failed$")


def _vector_check() -> ModuleType:
    path = HERE / "vector_check.py"
    spec = importlib.util.spec_from_file_location("igris_wire_vector_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vector_check() -> ModuleType:
    return _vector_check()


def _vectors() -> list[dict]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]


def test_every_vector_passes_on_cpython(vector_check: ModuleType) -> None:
    passed, failed, failures = vector_check.run(str(VECTORS))
    assert failures == [], "\n".join(failures)
    assert failed == 0
    assert passed == len(_vectors())


def test_run_takes_the_json_text_too(vector_check: ModuleType) -> None:
    text = json.dumps({"vectors": [
        {"id": "a", "op": "sha256", "hex": "616263",
         "expect_hex": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    ]})
    assert vector_check.run(text) == (1, 0, [])


def test_a_wrong_expectation_is_one_failure_line(vector_check: ModuleType, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"vectors": [
        {"id": "right", "op": "matches", "filter": "a/+", "topic": "a/b", "expect": True},
        {"id": "wrong", "op": "matches", "filter": "a/+", "topic": "a/b", "expect": False},
        {"id": "crash", "op": "hmac_sha256", "key_hex": "zz", "data_hex": "", "expect_hex": ""},
        {"id": "unknown", "op": "no_such_op"},
        {"id": "right", "op": "matches", "filter": "a", "topic": "a", "expect": True},
    ]}), encoding="utf-8")
    assert vector_check.main(["vector_check", str(path)]) == 4
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "FAIL wrong: matches: want False, got True"
    assert lines[1].startswith("FAIL crash: raised ")
    assert lines[2] == "FAIL unknown: unknown op 'no_such_op'"
    assert lines[3] == "FAIL right: duplicate vector id"
    assert lines[-1] == "wire vectors: 1 passed, 4 failed"


def test_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "vector_check.py")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = SUMMARY.match(done.stdout.splitlines()[-1])
    assert match, done.stdout + done.stderr
    failed = int(match.group(2))
    assert done.returncode == (1 if failed else 0)
    assert int(match.group(1)) + failed == len(_vectors())


def test_vector_ids_are_unique_and_ops_known(vector_check: ModuleType) -> None:
    ids = [v["id"] for v in _vectors()]
    assert len(ids) == len(set(ids))
    assert {v["op"] for v in _vectors()} <= set(vector_check._OPS)


def test_every_topic_builder_has_vectors() -> None:
    from agent.wire import Topics

    builders = {
        name for name, value in vars(Topics).items()
        if callable(value) and not name.startswith("_") and name not in ("filter", "parse")
    }
    built = {v["method"] for v in _vectors() if v["op"] == "topic_build" and "error" not in v}
    assert builders <= built, builders - built


def test_vector_file_has_no_escaped_surrogate_pairs() -> None:
    # MicroPython's json.loads keeps "\ud83d\ude00" as two lone surrogates (CPython joins
    # them), so astral characters are written raw and lone ones via $str_codepoints.
    text = VECTORS.read_text(encoding="utf-8")
    assert not re.search(r"(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F]", text)
