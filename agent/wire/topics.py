"""Build and parse Igris topics in one place (ARCHITECTURE.md, "Topics").

Every topic sits under a prefix, ``igris/<fleet>/`` by default. Device ids,
group names and pool names are single topic levels, so they may not hold
``/``, ``+``, ``#`` or control characters. Portable: used by the lite agent.
"""

from agent.errors import TopicInvalid

DEFAULT_PREFIX = "igris"
_MAX_NAME = 64
# ASCII only: str.isalpha()/isdigit() are Unicode-wide on CPython but ASCII-only on
# MicroPython, so they would make the two ports disagree on what a valid name is.
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it can be one topic level, else raise :class:`TopicInvalid`."""
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
        raise TopicInvalid("%s must be 1-%d characters, got %r" % (what, _MAX_NAME, name))
    for ch in name:
        if ch not in _NAME_CHARS:
            raise TopicInvalid(
                "%s %r may hold only letters, digits, '.', '_' and '-'" % (what, name)
            )
    return name


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` is one level, a final ``#`` is any rest.

    As brokers do, a filter starting with a wildcard does not match topics
    that start with ``$`` (``$SYS/...``).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return i == len(f_parts) - 1
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


class ParsedTopic:
    """What a topic names: ``name`` (e.g. ``"state"``) and its ``params``."""

    def __init__(self, name: str, params: dict):
        self.name = name
        self.params = params

    def __eq__(self, other):
        return (
            isinstance(other, ParsedTopic)
            and self.name == other.name
            and self.params == other.params
        )

    def __repr__(self):
        return "ParsedTopic(%r, %r)" % (self.name, self.params)


class Topics:
    """Topic builder and parser for one fleet.

    >>> t = Topics("lab")
    >>> t.state("pi-01")
    'igris/lab/node/pi-01/state'
    >>> t.parse("igris/lab/node/pi-01/state").params
    {'dev': 'pi-01'}
    """

    def __init__(self, fleet: str, prefix: str = DEFAULT_PREFIX):
        check_name(fleet, "fleet")
        if not prefix or "+" in prefix or "#" in prefix or prefix.endswith("/"):
            raise TopicInvalid("topic prefix %r must be non-empty, without wildcards" % prefix)
        self.fleet = fleet
        self.base = prefix + "/" + fleet + "/"

    def state(self, dev: str) -> str:
        return self.base + "node/" + check_name(dev, "device id") + "/state"

    def hb(self, dev: str) -> str:
        return self.base + "node/" + check_name(dev, "device id") + "/hb"

    def member(self, group: str, dev: str) -> str:
        """Retained marker: ``dev`` is in ``group`` (how group peers find each other)."""
        return self.base + "group/" + check_name(group, "group") + "/" + check_name(
            dev, "device id"
        )

    def policy(self) -> str:
        return self.base + "policy"

    def cmd(self, dev: str) -> str:
        if dev == "all":  # cmd/all is the broadcast topic
            raise TopicInvalid("device id 'all' is reserved (cmd/all reaches every device)")
        return self.base + "cmd/" + check_name(dev, "device id")

    def cmd_group(self, group: str) -> str:
        return self.base + "cmd/group/" + check_name(group, "group")

    def cmd_all(self) -> str:
        return self.base + "cmd/all"

    def reply(self, dev: str, request_id: str) -> str:
        """Where ``dev`` wants the replies to one of its requests (the response topic)."""
        return self.base + "reply/" + check_name(dev, "device id") + "/" + check_name(
            request_id, "request id"
        )

    def checkpoint(self, dev: str) -> str:
        return self.base + "ledger/" + check_name(dev, "device id") + "/checkpoint"

    def block(self) -> str:
        return self.base + "block"

    def block_snapshot(self) -> str:
        """Retained: every current blocklist entry, so a device that joins late learns them.

        An addition to the contract's topic table (``block`` itself is not
        retained: each entry is a live event that every device records).
        """
        return self.base + "block/snapshot"

    def mem(self, pool: str, *rest: str) -> str:
        parts = [check_name(pool, "pool")]
        for part in rest:
            parts.append(check_name(part, "memory topic level"))
        return self.base + "mem/" + "/".join(parts)

    def cmnd(self, dev: str, command: str) -> str:
        return self.base + "cmnd/" + check_name(dev, "device id") + "/" + check_name(
            command, "command"
        )

    def stat(self, dev: str, command: str) -> str:
        return self.base + "stat/" + check_name(dev, "device id") + "/" + check_name(
            command, "command"
        )

    def filter(self, *levels: str) -> str:
        """A subscription filter under the fleet, e.g. ``filter("node", "+", "state")``."""
        return self.base + "/".join(levels)

    def parse(self, topic: str) -> ParsedTopic:
        """Name a concrete topic; raises :class:`TopicInvalid` for anything else."""
        if not topic.startswith(self.base):
            raise TopicInvalid("topic %r is not under %r" % (topic, self.base))
        parts = topic[len(self.base):].split("/")
        n = len(parts)
        head = parts[0]
        try:
            if head == "node" and n == 3 and parts[2] in ("state", "hb"):
                return ParsedTopic(parts[2], {"dev": check_name(parts[1], "device id")})
            if head == "node" and n == 4 and parts[2] == "lite":
                # A gateway's signed relay of a lite device (``LiteTopics.relay`` builds it).
                return ParsedTopic(
                    "lite_peer",
                    {"dev": check_name(parts[1], "device id"),
                     "lite": check_name(parts[3], "device id")},
                )
            if head == "group" and n == 3:
                return ParsedTopic(
                    "member",
                    {"group": check_name(parts[1], "group"),
                     "dev": check_name(parts[2], "device id")},
                )
            if head == "policy" and n == 1:
                return ParsedTopic("policy", {})
            if head == "block" and n == 1:
                return ParsedTopic("block", {})
            if head == "block" and n == 2 and parts[1] == "snapshot":
                return ParsedTopic("block_snapshot", {})
            if head == "cmd" and n == 2 and parts[1] == "all":
                return ParsedTopic("cmd_all", {})
            if head == "cmd" and n == 3 and parts[1] == "group":
                return ParsedTopic("cmd_group", {"group": check_name(parts[2], "group")})
            if head == "cmd" and n == 2:
                return ParsedTopic("cmd", {"dev": check_name(parts[1], "device id")})
            if head == "reply" and n == 3:
                return ParsedTopic(
                    "reply",
                    {"dev": check_name(parts[1], "device id"),
                     "request": check_name(parts[2], "request id")},
                )
            if head == "ledger" and n == 3 and parts[2] == "checkpoint":
                return ParsedTopic("checkpoint", {"dev": check_name(parts[1], "device id")})
            if head == "mem" and n >= 2:
                rest = [check_name(part, "memory topic level") for part in parts[2:]]
                return ParsedTopic("mem", {"pool": check_name(parts[1], "pool"), "rest": rest})
            if head in ("cmnd", "stat") and n == 3:
                return ParsedTopic(
                    head,
                    {"dev": check_name(parts[1], "device id"),
                     "command": check_name(parts[2], "command")},
                )
        except TopicInvalid as exc:
            raise TopicInvalid("topic %r: %s" % (topic, exc)) from None
        raise TopicInvalid("topic %r names nothing Igris knows" % topic)
