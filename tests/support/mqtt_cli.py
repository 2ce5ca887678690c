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

    def __init__(self, port: int, topic: str, *, probe: bool = False):
        self.port = port
        self.proc = subprocess.Popen(
            [_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-v",
             "-q", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if probe:
            self._wait_subscribed(topic)

    def _wait_subscribed(self, topic_filter: str) -> None:
        # mosquitto_sub says nothing when its subscription is in place: publish a
        # probe on a topic the filter matches until it comes back (use only where
        # no agent listens on that topic).
        probe = topic_filter.replace("#", "_probe").replace("+", "_probe")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pub(self.port, probe, b"probe")
            try:
                while True:
                    topic, _ = self.lines.get(timeout=0.2)
                    if topic == probe:
                        return
            except queue.Empty:
                continue
        raise AssertionError(f"mosquitto_sub on {topic_filter!r} never saw its probe")

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
