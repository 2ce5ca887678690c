"""Run code on real MicroPython (the WebAssembly port, from npm) under Node.

The portable layer (``agent/compat``, ``agent/errors.py``, ``agent/wire``) must
run unchanged on MicroPython; this helper lets CPython tests prove it:

* :func:`ensure_micropython` installs the npm package
  ``@micropython/micropython-webassembly-pyscript`` at a pinned version, once,
  into a cache outside the repository (``$IGRIS_TEST_CACHE`` or
  ``~/.cache/igris-test/``), and reuses it afterwards;
* :func:`run_micropython` writes files into MicroPython's virtual file system
  and runs code there through ``tests/support/run_micropython.mjs``;
* :func:`run_vector_check` runs ``tests/wire/vector_check.py`` against the
  portable modules and reports its summary.

Node.js and npm are required, not optional: without them this raises
:class:`MicroPythonUnavailable` (tests must not skip, CI has to run them).

    python tests/support/micropython.py     # run the wire vectors on MicroPython
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
NPM_VERSION = "1.27.0"  # exact pin: the port's float formatting and json change between releases
HEAPSIZE = 16 * 1024 * 1024
RUN_TIMEOUT_S = 120
INSTALL_TIMEOUT_S = 600
MIN_NODE_MAJOR = 18

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("run_micropython.mjs")
VFS_ROOT = "/igris"
SUMMARY_RE = re.compile(r"^wire vectors: (\d+) passed, (\d+) failed$", re.MULTILINE)

INSTALL_HINT = (
    f"Node.js (>= {MIN_NODE_MAJOR}) and npm are needed to test the portable layer on "
    "MicroPython; install them (Debian/Ubuntu: apt-get install nodejs npm; or https://nodejs.org/)"
)


class MicroPythonUnavailable(RuntimeError):
    """Node.js or npm is missing, or the MicroPython package could not be installed."""


@dataclass
class MicroPythonRun:
    """What one MicroPython run printed and how it ended."""

    returncode: int  # 0 ran to the end, 2 raised (traceback in stderr), 3 could not load
    stdout: str
    stderr: str
    seconds: float


@dataclass
class VectorRun:
    """The outcome of ``vector_check`` on MicroPython."""

    ok: bool
    passed: int | None
    failed: int | None
    output: str
    returncode: int
    seconds: float


def cache_dir() -> Path:
    """Where the npm package is cached: ``$IGRIS_TEST_CACHE`` or ``~/.cache/igris-test``."""
    env = os.environ.get("IGRIS_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "igris-test"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MicroPythonUnavailable(f"{name} not found on PATH. {INSTALL_HINT}")
    return path


def _check_node(node: str) -> None:
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise MicroPythonUnavailable(f"cannot run {node} --version: {exc}. {INSTALL_HINT}") from exc
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        raise MicroPythonUnavailable(f"Node.js {version} is too old. {INSTALL_HINT}")


def _module_path(prefix: Path) -> Path:
    return prefix / "node_modules" / NPM_PACKAGE / "micropython.mjs"


def _installed(prefix: Path) -> bool:
    manifest = prefix / "node_modules" / NPM_PACKAGE / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return False
    return version == NPM_VERSION and _module_path(prefix).is_file()


def ensure_micropython() -> Path:
    """Path of the pinned package's ``micropython.mjs``, installing it on first use."""
    node = _tool("node")
    _check_node(node)
    prefix = cache_dir() / ("micropython-webassembly-pyscript-" + NPM_VERSION)
    if _installed(prefix):
        return _module_path(prefix)
    npm = _tool("npm")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # Install next to the final place, then rename: concurrent test runs never see half a tree.
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=prefix.parent))
    try:
        cmd = [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
               "--save-exact", f"{NPM_PACKAGE}@{NPM_VERSION}"]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MicroPythonUnavailable(f"npm install failed to run: {exc}") from exc
        if done.returncode != 0 or not _installed(staging):
            raise MicroPythonUnavailable(
                f"npm install of {NPM_PACKAGE}@{NPM_VERSION} failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        try:
            staging.rename(prefix)
        except OSError:
            if not _installed(prefix):  # not a lost race with another run: a real problem
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _module_path(prefix)


def portable_files(repo_root: Path = REPO_ROOT) -> dict[str, Path]:
    """The portable layer, as {path in MicroPython's file system: file on disk}."""
    names = ["agent/__init__.py", "agent/errors.py", "agent/compat/__init__.py"]
    names += sorted(p.relative_to(repo_root).as_posix()
                    for p in (repo_root / "agent" / "wire").glob("*.py"))
    return {VFS_ROOT + "/" + name: repo_root / name for name in names}


def run_micropython(
    code: str,
    files: dict[str, Path] | None = None,
    sys_path: list[str] | None = None,
    heapsize: int = HEAPSIZE,
    timeout: float = RUN_TIMEOUT_S,
) -> MicroPythonRun:
    """Run ``code`` on MicroPython after writing ``files`` into its file system."""
    module = ensure_micropython()
    manifest = {
        "module": str(module),
        "heapsize": heapsize,
        "files": [[target, str(source)] for target, source in (files or {}).items()],
        "sys_path": list(sys_path or []),
        "code": code,
    }
    with tempfile.TemporaryDirectory(prefix="igris-mp-") as tmp:
        manifest_path = Path(tmp) / "manifest.json"
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [_tool("node"), str(RUNNER), str(manifest_path)],
                capture_output=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"MicroPython run did not finish in {timeout} s") from exc
        seconds = time.perf_counter() - start
    return MicroPythonRun(
        returncode=done.returncode,
        stdout=done.stdout.decode("utf-8", "replace"),
        stderr=done.stderr.decode("utf-8", "replace"),
        seconds=seconds,
    )


def run_vector_check(repo_root: Path = REPO_ROOT) -> VectorRun:
    """Run ``tests/wire/vector_check.py`` on MicroPython against the portable layer."""
    files = portable_files(repo_root)
    wire_tests = repo_root / "tests" / "wire"
    files[VFS_ROOT + "/tests/wire/vector_check.py"] = wire_tests / "vector_check.py"
    files[VFS_ROOT + "/tests/wire/vectors.json"] = wire_tests / "vectors.json"
    vectors = VFS_ROOT + "/tests/wire/vectors.json"
    code = f"import vector_check\nvector_check.main(['vector_check', {vectors!r}])\n"
    result = run_micropython(code, files, sys_path=[VFS_ROOT, VFS_ROOT + "/tests/wire"])
    output = result.stdout + result.stderr
    matches = SUMMARY_RE.findall(result.stdout)
    passed = failed = None
    if matches:
        passed, failed = (int(n) for n in matches[-1])
    ok = result.returncode == 0 and failed == 0
    return VectorRun(ok, passed, failed, output, result.returncode, result.seconds)


def main() -> int:
    start = time.perf_counter()
    module = ensure_micropython()
    print(f"MicroPython: {module} (ready in {time.perf_counter() - start:.2f} s)")
    run = run_vector_check()
    sys.stdout.write(run.output)
    print(f"MicroPython run: {run.seconds:.2f} s, exit {run.returncode}")
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
