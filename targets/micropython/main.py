"""Board glue: read config.json, count the boot, wire real pins and umqtt, run.

The session number (a boot counter in ``session.txt``) orders births and
deaths at the gateway and makes commands captured in an earlier boot
useless. A crash restarts the board after a pause, so a bad broker address
does not become a hot reboot loop.
"""

import json
import time

import machine
from lite_agent import LiteAgent
from umqtt.simple import MQTTClient

RETRY_MS = 10000


class BoardPins:
    """GPIO through ``machine.Pin``: inputs for reading, outputs made on first write."""

    def __init__(self):
        self._pins = {}

    def read(self, gpio):
        pin = self._pins.get(gpio) or machine.Pin(gpio, machine.Pin.IN)
        return pin.value()

    def write(self, gpio, value):
        pin = self._pins.get(gpio)
        if pin is None:
            pin = self._pins[gpio] = machine.Pin(gpio, machine.Pin.OUT)
        pin.value(value)


def read_sensors():
    """The readings sent as telemetry; the MCU's own temperature where the port has it."""
    values = {}
    try:
        import esp32

        values["mcu_celsius"] = esp32.mcu_temperature()
    except (ImportError, AttributeError):
        pass
    return values


def next_session():
    try:
        with open("session.txt") as f:
            session = int(f.read()) + 1
    except (OSError, ValueError):
        session = 1
    with open("session.txt", "w") as f:
        f.write(str(session))
    return session


def main():
    with open("config.json") as f:
        config = json.load(f)
    broker = config["broker"]
    client = MQTTClient(config["device_id"], broker["host"], port=broker.get("port", 1883),
                        keepalive=int(config.get("keepalive_s", 30)))
    agent = LiteAgent(config, client, next_session(), pins=BoardPins(),
                      read_sensors=read_sensors)
    agent.start()
    agent.run(time.sleep_ms)


try:
    main()
except Exception as exc:  # the board must come back, whatever went wrong
    print("igris lite agent stopped:", repr(exc))
    time.sleep_ms(RETRY_MS)
    machine.reset()
