"""Topic building, parsing and filter matching, beyond the fixed vectors."""

from __future__ import annotations

import doctest
import random
import string

import pytest

import agent.wire.topics
from agent.errors import TopicInvalid, WireError
from agent.wire import ParsedTopic, Topics, check_name, matches

NAME_CHARS = string.ascii_letters + string.digits + "._-"


def random_name(rng: random.Random) -> str:
    while True:
        name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 12)))
        if name != "all":  # reserved: cmd/all is the broadcast topic
            return name


def built_topics(t: Topics, rng: random.Random) -> list[tuple[str, str, dict]]:
    """(topic, parsed name, parsed params) for every builder, with random names."""
    dev, group, pool, cmd, sub = (random_name(rng) for _ in range(5))
    return [
        (t.state(dev), "state", {"dev": dev}),
        (t.hb(dev), "hb", {"dev": dev}),
        (t.member(group, dev), "member", {"group": group, "dev": dev}),
        (t.policy(), "policy", {}),
        (t.cmd(dev), "cmd", {"dev": dev}),
        (t.cmd_group(group), "cmd_group", {"group": group}),
        (t.cmd_all(), "cmd_all", {}),
        (t.reply(dev, sub), "reply", {"dev": dev, "request": sub}),
        (t.checkpoint(dev), "checkpoint", {"dev": dev}),
        (t.block(), "block", {}),
        (t.block_snapshot(), "block_snapshot", {}),
        (t.mem(pool), "mem", {"pool": pool, "rest": []}),
        (t.mem(pool, sub, dev), "mem", {"pool": pool, "rest": [sub, dev]}),
        (t.cmnd(dev, cmd), "cmnd", {"dev": dev, "command": cmd}),
        (t.stat(dev, cmd), "stat", {"dev": dev, "command": cmd}),
    ]


@pytest.mark.parametrize("prefix", ["igris", "acme/igris", "x"])
def test_every_built_topic_parses_back(prefix: str) -> None:
    rng = random.Random(4231)
    for _ in range(300):
        t = Topics(random_name(rng), prefix)
        for topic, name, params in built_topics(t, rng):
            assert t.parse(topic) == ParsedTopic(name, params), topic


def test_built_topics_match_their_subscription_filters() -> None:
    rng = random.Random(7)
    t = Topics("lab")
    filters = {
        "state": t.filter("node", "+", "state"), "hb": t.filter("node", "+", "hb"),
        "member": t.filter("group", "+", "+"),
        "policy": t.policy(), "cmd": t.filter("cmd", "+"),
        "cmd_group": t.filter("cmd", "group", "+"), "cmd_all": t.cmd_all(),
        "checkpoint": t.filter("ledger", "+", "checkpoint"), "block": t.block(),
        "reply": t.filter("reply", "+", "+"),
        "block_snapshot": t.block_snapshot(),
        "mem": t.filter("mem", "#"), "cmnd": t.filter("cmnd", "+", "+"),
        "stat": t.filter("stat", "+", "+"),
    }
    for _ in range(50):
        for topic, name, _params in built_topics(t, rng):
            assert matches(filters[name], topic), (filters[name], topic)
            assert matches(t.filter("#"), topic)
            assert not matches(Topics("other").filter("#"), topic)
            others = [f for n, f in filters.items() if matches(f, topic) and n != name]
            # cmd/+ also matches cmd/all (so a device may not be called "all": see vectors)
            assert others in ([], [filters["cmd"]]), (topic, others)


def test_wildcards_in_the_filter_only() -> None:
    assert matches("a/+/c", "a/b/c")
    assert not matches("a/b/c", "a/+/c")  # a topic's '+' is not a wildcard
    assert matches("a/#", "a/b/c/d/e")
    assert not matches("a/#", "b/a")


def test_dollar_topics_need_an_explicit_filter() -> None:
    assert not matches("#", "$SYS/x")
    assert not matches("+/x", "$SYS/x")
    assert matches("$SYS/#", "$SYS/x")


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", " ", "a\nb", "x" * 65, "$SYS"])
def test_check_name_refuses_what_is_not_one_safe_level(bad: str) -> None:
    with pytest.raises(TopicInvalid, match="device id"):
        check_name(bad, "device id")


def test_check_name_accepts_the_whole_alphabet_and_64_chars() -> None:
    assert check_name(NAME_CHARS[:64]) == NAME_CHARS[:64]
    assert check_name(NAME_CHARS[64:]) == NAME_CHARS[64:]
    assert check_name("a" * 64) == "a" * 64


def test_topic_invalid_is_a_wire_error_and_a_value_error() -> None:
    with pytest.raises(TopicInvalid) as excinfo:
        Topics("lab").parse("igris/lab/nope")
    assert isinstance(excinfo.value, WireError)
    assert isinstance(excinfo.value, ValueError)
    assert "igris/lab/nope" in str(excinfo.value)


def test_parse_errors_name_the_topic() -> None:
    with pytest.raises(TopicInvalid, match="igris/lab/node/a b/state"):
        Topics("lab").parse("igris/lab/node/a b/state")


def test_parsed_topic_equality_and_repr() -> None:
    a = ParsedTopic("cmd", {"dev": "pi-01"})
    assert a == ParsedTopic("cmd", {"dev": "pi-01"})
    assert a != ParsedTopic("cmd", {"dev": "pi-02"})
    assert a != ParsedTopic("hb", {"dev": "pi-01"})
    assert a != ("cmd", {"dev": "pi-01"})
    assert repr(a) == "ParsedTopic('cmd', {'dev': 'pi-01'})"


def test_doctests() -> None:
    result = doctest.testmod(agent.wire.topics)
    assert result.attempted > 0
    assert result.failed == 0
