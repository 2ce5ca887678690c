"""The control socket's wire protocol: one JSON object per line, each way.

Request ``{"id": 1, "method": "status", "params": {}}``; answer
``{"id": 1, "result": ...}`` or ``{"id": 1, "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

SOCKET_NAME = "control.sock"
MAX_LINE = 1 << 20
