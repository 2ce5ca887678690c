"""How commands print: a human table by default, ``--json`` for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def emit(data: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or through ``human`` (default: key/value rows)."""
    if as_json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write((human or rows)(data) + "\n")


def rows(data: dict[str, Any], indent: int = 0) -> str:
    """Aligned ``key  value`` rows; nested dicts are indented beneath their key."""
    if not data:
        return " " * indent + "(none)"
    width = max(len(str(k)) for k in data)
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(" " * indent + str(key))
            lines.append(rows(value, indent + 2))
        else:
            lines.append(f"{' ' * indent}{key!s:<{width}}  {_cell(value)}")
    return "\n".join(lines)


def columns(lines: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first is the header) with every column padded to its widest cell."""
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in lines)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def when(ms: int | None) -> str:
    """A wall-clock time in milliseconds as local time for a table ("-" for none)."""
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def short(value: Any, width: int = 50) -> str:
    """A JSON value cut to ``width`` characters for a table cell."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."
