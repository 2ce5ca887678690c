"""The wire test vectors on real MicroPython (WebAssembly port under Node.js).

Runs ``vector_check.py`` unchanged against ``agent/compat``, ``agent/errors.py``
and ``agent/wire`` copied into MicroPython's file system. Node.js and npm are
required: without them these tests fail with an install hint, they never skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import micropython

VECTORS = Path(__file__).resolve().with_name("vectors.json")


def test_every_vector_passes_on_micropython() -> None:
    result = micropython.run_vector_check()
    count = len(json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"])
    assert result.returncode == 0, result.output
    assert result.failed == 0, result.output
    assert result.passed == count, result.output
    assert result.ok


def test_it_really_is_micropython_with_the_portable_files() -> None:
    code = (
        "import sys\n"
        "print(sys.implementation.name)\n"
        "from agent.compat import b64url_encode, sha256\n"
        "print(b64url_encode(sha256(b'abc'))[:8])\n"
    )
    result = micropython.run_micropython(
        code, micropython.portable_files(), sys_path=[micropython.VFS_ROOT]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["micropython", "ungWv48B"]


def test_a_python_exception_surfaces_with_its_traceback() -> None:
    result = micropython.run_micropython("def f():\n    raise ValueError('boom')\n\nf()\n")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "ValueError: boom" in result.stderr


def test_missing_node_is_a_clear_error_not_a_skip(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(micropython.MicroPythonUnavailable, match="install"):
        micropython.ensure_micropython()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("IGRIS_TEST_CACHE", str(tmp_path / "c"))
    assert micropython.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IGRIS_TEST_CACHE")
    assert micropython.cache_dir() == Path.home() / ".cache" / "igris-test"
