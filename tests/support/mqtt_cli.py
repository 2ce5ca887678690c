"""The real Mosquitto command-line clients, for tests that look from outside."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from typing import Any


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found; install it with: apt-get install mosquitto-clients")
    return path


class Sub:
    """``mosquitto_sub -v`` on ``topic``; lines are collected as (topic, payload)."""

    def __init__(self, port: int, topic: str):
        self.proc = subprocess.Popen(
            [_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-v",
             "-q", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            topic, _, payload = raw.rstrip(b"\n").partition(b" ")
            self.lines.put((topic.decode(), payload))

    def expect(self, predicate, timeout: float = 10.0) -> tuple[str, Any]:
        """The first (topic, JSON payload) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("mosquitto_sub saw no matching message in time")
            try:
                topic, payload = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = payload
            if predicate(topic, doc):
                return topic, doc

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def pub(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """One ``mosquitto_pub`` (payload read from stdin, so any bytes go)."""
    args = [_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-s",
            "-q", "1"]
    if retain:
        args.append("-r")
    subprocess.run(args, input=payload, check=True, timeout=10)
