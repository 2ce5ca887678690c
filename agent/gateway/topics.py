"""The lite devices' topics, ``<prefix>/<fleet>/lite/<device>/<leaf>``, built and parsed here.

The board builds the same strings in ``targets/micropython/lite_agent.py``
(``lite_topic``); ``tests/lite`` checks that both agree.
"""

from __future__ import annotations

from agent.errors import TopicInvalid
from agent.wire import Topics, check_name

LITE = "lite"
UPLINK = ("state", "hb", "tele", "reply")
"""What a lite device publishes (the gateway subscribes to these)."""
COMMAND = "cmd"


class LiteTopics:
    """Lite topics of one fleet.

    >>> t = LiteTopics(Topics("lab"))
    >>> t.topic("esp-01", "state")
    'igris/lab/lite/esp-01/state'
    >>> t.parse("igris/lab/lite/esp-01/hb")
    ('esp-01', 'hb')
    >>> t.relay("gw-1", "esp-01")
    'igris/lab/node/gw-1/lite/esp-01'
    """

    def __init__(self, topics: Topics):
        self.topics = topics
        self._base = topics.filter(LITE) + "/"

    def topic(self, device_id: str, leaf: str) -> str:
        return self._base + check_name(device_id, "device id") + "/" + leaf

    def relay(self, gateway: str, device_id: str) -> str:
        """Retained: ``gateway``'s signed account of lite device ``device_id`` for the mesh,
        ``node/<gateway>/lite/<device>`` (``Topics.parse`` names it ``lite_peer``).

        In the gateway's own ``node/<gw>/`` subtree, not under ``lite/``: the
        ``lite/<device>/`` topics are the board's (MAC'd), and the mesh follows a
        gateway's relays the way it follows its presence.
        """
        return self.topics.filter("node", check_name(gateway, "device id"), LITE,
                                  check_name(device_id, "device id"))

    def uplink_filters(self) -> list[str]:
        return [self.topics.filter(LITE, "+", leaf) for leaf in UPLINK]

    def parse(self, topic: str) -> tuple[str, str]:
        """``(device, leaf)`` of an uplink topic; :class:`TopicInvalid` for anything else."""
        if not topic.startswith(self._base):
            raise TopicInvalid(f"topic {topic!r} is not under {self._base!r}")
        parts = topic[len(self._base):].split("/")
        if len(parts) != 2 or parts[1] not in UPLINK:
            raise TopicInvalid(f"topic {topic!r} is no lite uplink topic")
        return check_name(parts[0], "device id"), parts[1]
