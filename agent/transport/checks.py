"""What both transports refuse before anything reaches a broker.

The checks a broker itself applies (topic syntax, filter wildcards, QoS, a
bytes payload), in one place, so the in-process and MQTT transports refuse
exactly the same input.
"""

from __future__ import annotations

from agent.errors import TopicInvalid

_MAX_TOPIC_BYTES = 65535


def check_topic(topic: str) -> str:
    """Return ``topic`` if it can be published to, else raise :class:`TopicInvalid`."""
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise TopicInvalid(
            f"topic {topic!r} holds a wildcard; publish to a concrete topic (wildcards are for"
            " subscription filters)"
        )
    return topic


def check_filter(topic_filter: str) -> str:
    """Return ``topic_filter`` if it is a valid MQTT filter, else raise :class:`TopicInvalid`."""
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicInvalid(
                f"topic filter {topic_filter!r}: '#' must be a whole level and the last one"
            )
        if "+" in level and level != "+":
            raise TopicInvalid(f"topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def _check_common(value: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise TopicInvalid(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise TopicInvalid(f"{what} {value!r} holds a NUL character")
    if len(value.encode("utf-8")) > _MAX_TOPIC_BYTES:
        raise TopicInvalid(f"{what} is longer than {_MAX_TOPIC_BYTES} bytes")


def check_publish_args(payload: object, qos: int) -> bytes:
    """Validate what both transports accept for a publish; return the payload as bytes."""
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1, got {qos!r} (Igris does not use QoS 2)")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    return bytes(payload)
