"""``umqtt.simple.MQTTClient``'s interface over paho, so the lite agent runs on CPython.

The lite agent is written against ``umqtt.simple`` (what MicroPython boards
have). This adapter gives it the same calls on CPython, against a real
broker: blocking ``connect``, ``publish(topic, msg, retain, qos)``,
``subscribe``, ``set_last_will`` before connecting, and ``check_msg`` /
``wait_msg`` that hand one received message to the callback *on the
caller's thread* (paho's network thread only queues them), as umqtt does.

Run a lite agent from its ``config.json`` against a broker::

    python -m tests.support.umqtt_paho CONFIG.json SESSION
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

CONNECT_TIMEOUT_S = 10.0


class MQTTClient:
    """The subset of ``umqtt.simple.MQTTClient`` the lite agent uses."""

    def __init__(self, client_id: str, server: str, port: int = 1883, keepalive: int = 30):
        self.server = server
        self.port = port
        self.keepalive = keepalive
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=paho.MQTTv311)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._inbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self._connected = threading.Event()
        self._callback: Callable[[bytes, bytes], None] | None = None

    def set_callback(self, callback: Callable[[bytes, bytes], None]) -> None:
        self._callback = callback

    def set_last_will(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        self._client.will_set(topic, msg, qos=qos, retain=retain)

    def connect(self, clean_session: bool = True) -> int:
        self._client.connect(self.server, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S):
            raise OSError(f"no CONNACK from {self.server}:{self.port}")
        return 0

    def publish(self, topic: str, msg: bytes, retain: bool = False, qos: int = 0) -> None:
        info = self._client.publish(topic, msg, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise OSError(f"publish on {topic} failed: {paho.error_string(info.rc)}")

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self._client.subscribe(topic, qos=qos)

    def check_msg(self) -> None:
        try:
            topic, payload = self._inbox.get_nowait()
        except queue.Empty:
            return
        self._deliver(topic, payload)

    def wait_msg(self) -> None:
        topic, payload = self._inbox.get()
        self._deliver(topic, payload)

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _deliver(self, topic: bytes, payload: bytes) -> None:
        if self._callback is not None:
            self._callback(topic, payload)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self._inbox.put((message.topic.encode(), bytes(message.payload)))


def main(argv: list[str]) -> int:
    """Run the lite agent of ``argv[1]`` (config.json) as boot ``argv[2]`` until killed."""
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "targets" / "micropython"), str(root / "tests" / "lite")]
    from lite_agent import LiteAgent
    from memory_mqtt import MemoryPins  # the board's pins, in memory

    config = json.loads(Path(argv[1]).read_text())
    broker = config["broker"]
    client = MQTTClient(config["device_id"], broker["host"], broker["port"],
                        keepalive=int(config.get("keepalive_s", 30)))
    agent = LiteAgent(config, client, int(argv[2]), pins=MemoryPins({}),
                      read_sensors=lambda: {"celsius": 21.0})
    agent.start()
    print("lite agent", config["device_id"], "up", flush=True)
    agent.run(lambda ms: time.sleep(ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
