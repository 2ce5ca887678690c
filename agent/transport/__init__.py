"""How components reach each other: one :class:`Transport` interface, two implementations.

:class:`InprocTransport` (on an :class:`InprocBroker`) keeps everything in the
process: the single-device mode and the tests. :class:`MqttTransport` talks
to an MQTT broker. Components see only :class:`Transport`.
"""

from agent.transport.base import Message, Subscription, Transport, TransportStats, Will
from agent.transport.inproc import InprocBroker, InprocTransport
from agent.transport.mqtt import MqttTransport
from agent.transport.mqtt_settings import MqttSettings

__all__ = [
    "InprocBroker",
    "InprocTransport",
    "Message",
    "MqttSettings",
    "MqttTransport",
    "Subscription",
    "Transport",
    "TransportStats",
    "Will",
]
