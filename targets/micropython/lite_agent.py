"""The Igris lite agent: a microcontroller (ESP32, Pico W) on the mesh through its gateway.

Runs unchanged on MicroPython and CPython. It builds every message with the
same ``agent/compat`` and ``agent/wire`` modules as the full agent (copied to
the board), so full and lite devices cannot drift apart on the wire. Instead
of an Ed25519 signature each envelope carries ``"mac"``: HMAC-SHA256 under a
per-device key that only this board and its gateway hold (``igris enroll
--lite``). Only the gateway accepts these messages; it relays the device into
the mesh and turns signed bus commands into MAC'd ones (``docs/lite.md``).

Topics, all under ``igris/<fleet>/lite/<device>/`` (a subtree of its own, so
full agents following ``node/+/state`` never see an envelope they cannot
verify, and a broker ACL can give the board exactly ``lite/<device>/#``):

=========  ========  =====================================================
``state``  retained  MAC'd birth; the broker's last will is a MAC'd death
``hb``               heartbeat every ``heartbeat_s``
``tele``             sensor readings every ``telemetry_s`` (kind ``tele``)
``cmd``              MAC'd commands from the gateway (subscribed)
``reply``            MAC'd replies to them
=========  ========  =====================================================

The MQTT client is injected and shaped like ``umqtt.simple.MQTTClient``
(``set_callback``, ``set_last_will``, ``connect``, ``publish``, ``subscribe``,
``check_msg``, ``disconnect``), so a test can hand in an in-memory one and a
board the real one::

    agent = LiteAgent(config, MQTTClient(...), session=boot_count, pins=BoardPins(config))
    agent.start()
    agent.run(time.sleep_ms)

A command is accepted only from the configured gateway, with a valid MAC,
naming this boot's session, and with a timestamp after the last accepted
one: a captured command cannot be replayed, not even after a reboot (the
session number grows at each boot), and no wall clock is needed for that.
Anything else is dropped and counted (``status`` shows the counts).
"""

import time

from agent.compat import b64url_decode, monotonic_ms, wall_ms
from agent.errors import ConfigInvalid, EnvelopeRejected
from agent.wire import (
    Envelope,
    HybridClock,
    Topics,
    check_name,
    compare_ts,
    mac_envelope,
    parse_envelope,
    verify_envelope_mac,
)

VERSION = "1.0"
KEY_BYTES = 32
MAX_COMMAND_BYTES = 4096
LITE = "lite"
COMMANDS = ("ping", "status", "gpio.read", "gpio.write")  # all but gpio.write read-only
_DEFAULTS = {"topic_prefix": "igris", "pins": {}, "writable": [], "heartbeat_s": 10,
             "telemetry_s": 30, "keepalive_s": 30}
_REQUIRED = ("device_id", "fleet", "gateway", "key", "broker")
_KNOWN = ("device_id", "fleet", "gateway", "key", "broker", "topic_prefix", "pins", "writable",
          "heartbeat_s", "telemetry_s", "keepalive_s", "wifi")


def lite_topic(topics, device_id, leaf):
    """``igris/<fleet>/lite/<device>/<leaf>``: the one place the lite topic layout lives
    on the board (the gateway's ``agent/gateway/topics.py`` builds the same, tested)."""
    return topics.filter(LITE, check_name(device_id, "device id"), leaf)


def check_config(config):
    """``config`` (the board's ``config.json``) with defaults filled in, or ConfigInvalid.

    Every message names the key and what it should hold, because a wrong
    config on a board is found on a serial console, far from any docs.
    """
    if not isinstance(config, dict):
        raise ConfigInvalid("config.json must hold a JSON object")
    for name in config:
        if name not in _KNOWN:
            raise ConfigInvalid("config.json: unknown key " + repr(name) + "; known: "
                                + ", ".join(_KNOWN))
    for name in _REQUIRED:
        if name not in config:
            raise ConfigInvalid("config.json: " + repr(name) + " is missing; "
                                "write it with 'igris enroll --lite'")
    out = dict(_DEFAULTS)
    out.update(config)
    for name in ("device_id", "fleet", "gateway"):
        check_name(out[name], "config.json " + name)
    try:
        key = b64url_decode(out["key"])
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigInvalid("config.json: 'key' must be 32 bytes in base64url; "
                            "make one with 'igris enroll --lite'")
    broker = out["broker"]
    if not (isinstance(broker, dict) and isinstance(broker.get("host"), str)
            and isinstance(broker.get("port", 1883), int)):
        raise ConfigInvalid("config.json: 'broker' must be {\"host\": \"...\", \"port\": 1883}")
    pins = out["pins"]
    if not isinstance(pins, dict):
        raise ConfigInvalid("config.json: 'pins' must map names to GPIO numbers")
    for name in pins:
        check_name(name, "config.json pin name")
        if type(pins[name]) is not int or pins[name] < 0:
            raise ConfigInvalid("config.json: pin " + repr(name) + " must be a GPIO number")
    for name in out["writable"]:
        if name not in pins:
            raise ConfigInvalid("config.json: writable pin " + repr(name)
                                + " is not in 'pins'; add it there first")
    for name in ("heartbeat_s", "telemetry_s", "keepalive_s"):
        value = out[name]
        if type(value) not in (int, float) or value <= 0:
            raise ConfigInvalid("config.json: " + repr(name) + " must be a positive number")
    return out


def _elapsed_ms(now, then):
    # ticks_ms wraps on the boards; ticks_diff knows how.
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(now, then)
    return now - then


def _error(code, message):
    return {"ok": False, "error": {"code": code, "message": message}}


def _heap():
    # Free and used heap where the port tells (MicroPython's gc), else nothing.
    try:
        import gc

        return {"free": gc.mem_free(), "used": gc.mem_alloc()}
    except (ImportError, AttributeError):
        return None


class LiteAgent:
    """One lite device: presence, telemetry and commands over an injected MQTT client.

    ``pins`` has ``read(gpio) -> 0|1`` and ``write(gpio, 0|1)``; ``read_sensors()``
    returns a JSON object of readings. ``now_ms`` and ``ticks_ms`` are the wall
    and monotonic clocks (injectable for tests).
    """

    def __init__(self, config, client, session, pins=None, read_sensors=None,
                 now_ms=wall_ms, ticks_ms=monotonic_ms):
        self.config = check_config(config)
        self.device_id = self.config["device_id"]
        self.gateway = self.config["gateway"]
        self.session = session
        self.client = client
        self.pins = pins
        self.read_sensors = read_sensors
        self.clock = HybridClock(now_ms)
        self._ticks = ticks_ms
        self._key = b64url_decode(self.config["key"])
        topics = Topics(self.config["fleet"], self.config["topic_prefix"])
        self.topics = {leaf: lite_topic(topics, self.device_id, leaf)
                       for leaf in ("state", "hb", "tele", "cmd", "reply")}
        self._last_cmd_ts = None
        self._started = 0
        self._next_hb = 0
        self._next_tele = 0
        self.heartbeats = 0
        self.readings = 0
        self.answered = 0
        self.dropped = {}

    # ------------------------------------------------------------------ presence

    def seal(self, kind, body):
        """Wire bytes of a new MAC'd envelope from this device."""
        env = Envelope(self.device_id, kind, body, self.clock.now())
        return mac_envelope(env, self._key).encode()

    def start(self):
        """Set the will, connect, subscribe to commands, publish the birth."""
        self.client.set_callback(self._on_message)
        self.client.set_last_will(self.topics["state"], self._death("lost"), True, 1)
        self.client.connect()
        self.client.subscribe(self.topics["cmd"], 1)
        self.client.publish(self.topics["state"], self.seal("state", self._birth()), True, 1)
        self._started = self._ticks()
        self._next_hb = self._started + int(self.config["heartbeat_s"] * 1000)
        self._next_tele = self._started + int(self.config["telemetry_s"] * 1000)

    def stop(self):
        """Say goodbye (a retained death, reason ``shutdown``) and disconnect."""
        self.client.publish(self.topics["state"], self._death("shutdown"), True, 1)
        self.client.disconnect()

    def _birth(self):
        return {"session": self.session, "lite": True, "gateway": self.gateway,
                "version": VERSION, "heartbeat_s": self.config["heartbeat_s"],
                "pins": sorted(self.config["pins"]), "writable": list(self.config["writable"]),
                "commands": list(COMMANDS)}

    def _death(self, reason):
        return self.seal("death", {"session": self.session, "reason": reason})

    def poll(self):
        """One turn: take a waiting command, send what is due; ms until the next is due."""
        self.client.check_msg()
        now = self._ticks()
        if _elapsed_ms(now, self._next_hb) >= 0:
            self.heartbeat()
            self._next_hb = now + int(self.config["heartbeat_s"] * 1000)
        if _elapsed_ms(now, self._next_tele) >= 0:
            self.telemetry()
            self._next_tele = now + int(self.config["telemetry_s"] * 1000)
        return max(0, min(_elapsed_ms(self._next_hb, now), _elapsed_ms(self._next_tele, now)))

    def run(self, sleep_ms, step_ms=50):
        """Poll for ever, sleeping at most ``step_ms`` between turns (commands wait no longer)."""
        while True:
            sleep_ms(min(step_ms, self.poll()))

    def heartbeat(self):
        self.heartbeats += 1
        body = {"session": self.session, "seq": self.heartbeats}
        heap = _heap()
        if heap is not None:
            body["heap"] = heap
        self.client.publish(self.topics["hb"], self.seal("state", body), False, 0)

    def telemetry(self):
        if self.read_sensors is None:
            return
        self.readings += 1
        body = {"session": self.session, "seq": self.readings, "values": self.read_sensors()}
        self.client.publish(self.topics["tele"], self.seal("tele", body), False, 0)

    # ------------------------------------------------------------------ commands

    def _on_message(self, topic, msg):
        try:
            env = self._admit(msg)
        except EnvelopeRejected as exc:
            self.dropped[exc.reason] = self.dropped.get(exc.reason, 0) + 1
            return
        self._last_cmd_ts = env.ts
        self.clock.observe(env.ts)  # the gateway's clock is the better one
        reply = self.execute(env.body.get("cmd"), env.body.get("args", {}))
        reply["re"] = env.id
        reply["session"] = self.session
        self.client.publish(self.topics["reply"], self.seal("reply", reply), False, 1)
        self.answered += 1

    def _admit(self, msg):
        env = parse_envelope(msg, MAX_COMMAND_BYTES)
        if env.src != self.gateway:
            raise EnvelopeRejected("unknown_key", "not from gateway " + repr(self.gateway))
        verify_envelope_mac(env, self._key)
        if env.kind != "cmd":
            raise EnvelopeRejected("not_envelope", "kind " + repr(env.kind) + " is no command")
        if env.body.get("session") != self.session:
            raise EnvelopeRejected("stale_session", "command for another boot")
        if self._last_cmd_ts is not None and compare_ts(env.ts, self._last_cmd_ts) <= 0:
            raise EnvelopeRejected("replay", "command not newer than the last one")
        return env

    def execute(self, name, args):
        """Run one command: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``."""
        if not isinstance(args, dict):
            return _error("bad_args", "arguments must be an object")
        if name == "ping":
            return {"ok": True, "result": {"pong": True, "device": self.device_id}}
        if name == "status":
            return {"ok": True, "result": self.status()}
        if name in ("gpio.read", "gpio.write"):
            return self._gpio(name, args)
        return _error("unknown_command", "no command " + repr(name) + " on a lite device; "
                      "it answers " + ", ".join(COMMANDS))

    def status(self):
        return {"device_id": self.device_id, "session": self.session, "version": VERSION,
                "uptime_s": _elapsed_ms(self._ticks(), self._started) // 1000,
                "heartbeats": self.heartbeats, "readings": self.readings,
                "answered": self.answered, "dropped": dict(self.dropped), "heap": _heap(),
                "pins": sorted(self.config["pins"]), "writable": list(self.config["writable"])}

    def _gpio(self, name, args):
        pins = self.config["pins"]
        pin = args.get("pin")
        if pin not in pins:
            return _error("bad_args", "pin " + repr(pin) + " is not configured; pins: "
                          + ", ".join(sorted(pins)))
        if self.pins is None:
            return _error("failed", "this board has no pin access")
        if name == "gpio.read":
            return {"ok": True, "result": {"pin": pin, "value": self.pins.read(pins[pin])}}
        if pin not in self.config["writable"]:
            return _error("forbidden", "pin " + repr(pin) + " is read-only on "
                          + self.device_id + "; writable: "
                          + (", ".join(self.config["writable"]) or "none"))
        value = args.get("value")
        if value not in (0, 1):  # True and False compare equal to 1 and 0
            return _error("bad_args", "'value' must be 0, 1, true or false")
        self.pins.write(pins[pin], 1 if value else 0)
        return {"ok": True, "result": {"pin": pin, "value": 1 if value else 0}}
