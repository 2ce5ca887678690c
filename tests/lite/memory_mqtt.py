"""An in-memory stand-in for ``umqtt.simple``, in Python that MicroPython runs too.

The lite agent's MicroPython tests hand it :class:`MQTTClient` in place of
``umqtt.simple.MQTTClient``: the same methods and argument order
(``set_last_will(topic, msg, retain, qos)``, ``publish(topic, msg, retain,
qos)``, callbacks with bytes), on a :class:`MemoryBroker` that keeps retained
messages, routes by MQTT filters and sends a client's will when its
connection is lost (:meth:`MQTTClient.lose`). :class:`MemoryPins` is a pin
bank, for boards without pins. No typing, no dataclasses, no f-strings.
"""

from agent.wire import matches


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value):
    return value.encode() if isinstance(value, str) else bytes(value)


class MemoryBroker:
    """Routes publishes to subscribed clients; ``log`` keeps every publish in order."""

    def __init__(self):
        self.retained = {}
        self.clients = []
        self.log = []  # [topic, payload text, retain, qos]

    def route(self, topic, payload, retain, qos):
        self.log.append([topic, payload.decode(), retain, qos])
        if retain:
            self.retained[topic] = payload
        for client in self.clients:
            client.offer(topic, payload)

    def inject(self, topic, payload):
        """A message from elsewhere (the gateway), not retained."""
        self.route(topic, _bytes(payload), False, 1)


class MQTTClient:
    """The part of ``umqtt.simple.MQTTClient`` the lite agent uses."""

    def __init__(self, client_id, broker):
        self.client_id = client_id
        self.broker = broker
        self.callback = None
        self.will = None
        self.subscriptions = []
        self.inbox = []
        self.connected = False

    def set_callback(self, callback):
        self.callback = callback

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (_text(topic), _bytes(msg), retain, qos)

    def connect(self, clean_session=True):
        self.connected = True
        self.broker.clients.append(self)
        return 0

    def publish(self, topic, msg, retain=False, qos=0):
        if not self.connected:
            raise OSError("not connected")
        self.broker.route(_text(topic), _bytes(msg), retain, qos)

    def subscribe(self, topic, qos=0):
        topic = _text(topic)
        self.subscriptions.append(topic)
        for name in self.broker.retained:
            if matches(topic, name):
                self.inbox.append((name, self.broker.retained[name]))

    def offer(self, topic, payload):
        for topic_filter in self.subscriptions:
            if matches(topic_filter, topic):
                self.inbox.append((topic, payload))
                return

    def check_msg(self):
        if self.inbox:
            topic, payload = self.inbox.pop(0)
            self.callback(topic.encode(), payload)

    def wait_msg(self):
        if not self.inbox:
            raise OSError("no message waiting (an in-memory broker never blocks)")
        self.check_msg()

    def disconnect(self):
        self.connected = False
        self.broker.clients.remove(self)

    def lose(self):
        """The connection breaks: the broker publishes the will."""
        self.disconnect()
        if self.will is not None:
            self.broker.route(self.will[0], self.will[1], self.will[2], self.will[3])


class MemoryPins:
    """GPIO number -> level."""

    def __init__(self, levels):
        self.levels = dict(levels)

    def read(self, gpio):
        return self.levels.get(gpio, 0)

    def write(self, gpio, value):
        self.levels[gpio] = value
