"""Policy sync: schema, operator signature, versions, atomic apply, late joiners, restart."""

from __future__ import annotations

import asyncio
import copy

import pytest

from agent.db import Database
from agent.errors import PolicyRejected
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.mesh import PolicySync
from agent.mesh.policy import policy_body, policy_digest
from agent.mesh.policy_schema import default_policy, validate_policy
from agent.transport import InprocBroker, InprocTransport
from agent.wire import HybridClock, Topics

NOW = 1_800_000_000_000
TOPICS = Topics("lab")


def clock() -> int:
    return NOW


class Device:
    """A device's channel and PolicySync on the shared hub; ledger records kept in a list."""

    def __init__(self, root, hub):
        self.identity = Identity.load(root)
        self.db = Database.open(root / "igris.db")
        self.transport = InprocTransport(hub, client_id=self.identity.device_id)
        self.channel = SignedChannel(
            self.transport, self.identity,
            TrustStore(self.identity.ca_public, fleet="lab", now_ms=clock),
            hlc=HybridClock(clock), now_ms=clock,
        )
        self.records: list[tuple[str, dict]] = []
        self.sync = PolicySync(self.channel, TOPICS, self.db,
                               record=lambda k, b: self.records.append((k, b)), now_ms=clock)
        self.seen: list[int] = []
        self.sync.add_listener(lambda doc: self.seen.append(doc["version"]))

    async def start(self) -> Device:
        await self.transport.start()
        await self.sync.start()
        return self

    async def push(self, doc, *, retain=True):
        body = {"policy": doc, "cert": self.identity.certificate.to_dict()}
        await self.channel.publish(TOPICS.policy(), "policy", body, qos=1, retain=retain)

    async def close(self):
        await self.transport.stop()
        self.db.close()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def fleet(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    for dev, role in (("op", "operator"), ("d1", "device"), ("d2", "device"), ("d3", "device")):
        enroll(tmp_path / dev, ca, dev, now_ms=NOW, role=role)
    return tmp_path, InprocBroker()


def version(n: int, **changes) -> dict:
    doc = copy.deepcopy(default_policy())
    doc["version"] = n
    doc.update(changes)
    return doc


async def test_operator_policy_applies_atomically_and_reaches_late_joiners(fleet):
    tmp, hub = fleet
    op = await Device(tmp / "op", hub).start()
    d1 = await Device(tmp / "d1", hub).start()
    assert d1.sync.version == 1 and d1.seen == [1]
    doc = version(2, membership={"suspect_after_s": 5, "dead_after_s": 15})
    await op.push(doc)
    await settle()
    assert d1.sync.version == 2 and d1.seen == [1, 2]
    assert d1.sync.section("membership") == {"suspect_after_s": 5, "dead_after_s": 15}
    assert d1.records == [("policy", {"version": 2, "digest": policy_digest(doc),
                                      "author": "op"})]
    row = d1.db.conn.execute("SELECT version, author FROM policy").fetchall()
    assert row == [(2, "op")]
    late = await Device(tmp / "d2", hub).start()  # learns it from the retained message
    await settle()
    assert late.sync.version == 2 and late.sync.show()["author"] == "op"
    for dev in (op, d1, late):
        await dev.close()


async def test_rollback_wrong_role_and_bad_schema_change_nothing(fleet):
    tmp, hub = fleet
    op = await Device(tmp / "op", hub).start()
    d1 = await Device(tmp / "d1", hub).start()
    d2 = await Device(tmp / "d2", hub).start()
    await op.push(version(3))
    await settle()
    await op.push(version(2))  # rollback attempt
    await settle()
    await op.push(version(3, description="same version, other text"))
    await settle()
    await d2.push(version(9))  # a device is not an operator
    await settle()
    bad = version(10)
    bad["membership"] = {"suspect_after_s": 50, "dead_after_s": 10}
    await op.push(bad)
    await settle()
    await op.push(version(11, routr={}))
    await settle()
    assert d1.sync.version == 3 and d1.seen == [1, 3]
    assert d1.sync.rejected == {"version": 2, "role": 1, "schema": 2}
    assert "did you mean 'router'" in d1.sync.last_rejection
    kinds = [k for k, _ in d1.records]
    assert kinds == ["policy"] + ["policy_rejected"] * 5
    assert d1.db.conn.execute("SELECT count(*) FROM policy").fetchone() == (1,)
    for dev in (op, d1, d2):
        await dev.close()


async def test_a_rejected_retained_policy_is_recorded_once(fleet):
    tmp, hub = fleet
    d2 = await Device(tmp / "d2", hub).start()
    await d2.push(version(5))  # retained, wrong role
    await settle()
    d1 = await Device(tmp / "d1", hub).start()
    await settle()
    await d1.transport.stop()
    await d1.transport.start()  # resubscribe: the retained message comes again
    await settle()
    assert [k for k, _ in d1.records] == ["policy_rejected"]
    assert d1.sync.version == 1
    await d1.close()
    await d2.close()


async def test_policy_in_force_survives_restart(fleet):
    tmp, hub = fleet
    op = await Device(tmp / "op", hub).start()
    d1 = await Device(tmp / "d1", hub).start()
    await op.push(version(4), retain=False)
    await settle()
    await d1.close()
    again = Device(tmp / "d1", InprocBroker())
    assert again.sync.version == 4 and again.sync.show()["author"] == "op"
    again.db.close()
    await op.close()


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 0}, "version: expected an integer >= 1"),
    ({"version": "2"}, "version: expected an integer >= 1"),
    ({"membership": {"suspect_after_s": -1, "dead_after_s": 5}}, "suspect_after_s"),
    ({"router": {"weights": {"latency": 2}}}, "router.weights.latency"),
    ({"orchestration": {"max_cpu_percent": True}}, "max_cpu_percent: expected a number"),
    ({"trust": {"ca": [{"key": "AAAA"}]}}, r"trust.ca\[0\].key: expected the base64url"),
    ({"membership": []}, "membership: expected a JSON object"),
    ({"actions": {"x": {"argv": ["true"], "timeout_s": 601}}}, "at most 600"),
    ({"actions": {"x": {"argv": "rm -rf /"}}}, "non-empty list of strings"),
])
def test_schema_errors_name_the_key(change, message):
    doc = version(2)
    doc.update(change)
    with pytest.raises(PolicyRejected, match=message):
        validate_policy(doc)


def test_policy_body_validates_before_anything_is_signed():
    with pytest.raises(PolicyRejected, match="version: required"):
        policy_body({"description": "x"}, {})
    assert validate_policy(default_policy())["version"] == 1
