"""The CLI's side of the control socket (blocking: the CLI has no event loop)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agent.control.protocol import MAX_LINE
from agent.errors import AgentNotRunning, ControlError


def call(path: Path, method: str, params: dict[str, Any] | None = None,
         *, timeout: float = 10.0) -> Any:
    """Ask the agent listening on ``path``; raise :class:`AgentNotRunning` if none is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning(
                f"no agent is running for this root (nothing answers on {path}); "
                "start one with 'igris run'"
            ) from None
        except PermissionError:
            raise ControlError(
                f"not allowed to open {path}; run as the agent's user (or root)"
            ) from None
        sock.sendall(json.dumps({"id": 1, "method": method, "params": params or {}}).encode()
                     + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlError("the agent closed the control connection without answering")
            buf += chunk
            if len(buf) > MAX_LINE:
                raise ControlError("the agent's answer is too large")
    except TimeoutError:
        raise ControlError(f"the agent did not answer {method!r} within {timeout:g} s") from None
    finally:
        sock.close()
    answer = json.loads(buf)
    if "error" in answer:
        err = answer["error"]
        raise ControlError(f"{err.get('type')}: {err.get('message')}")
    return answer["result"]
