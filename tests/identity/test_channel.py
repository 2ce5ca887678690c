"""The signed channel's gate: what is accepted, and every way a message is dropped."""

import asyncio

import pytest

from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.transport import InprocBroker, InprocTransport
from agent.transport.base import Message
from agent.wire import Envelope, HybridClock, mac_envelope, sign_envelope
from tests.support.clock import Clock

NOW = 1_800_000_000_000


@pytest.fixture
def fleet(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    idents = {}
    for dev in ("a", "b"):
        enroll(tmp_path / dev, ca, dev, now_ms=NOW, days=10)
        idents[dev] = Identity.load(tmp_path / dev)
    stranger_ca = FleetCa.init(tmp_path / "stranger-ca", "lab")
    enroll(tmp_path / "s", stranger_ca, "s", now_ms=NOW)
    idents["stranger"] = Identity.load(tmp_path / "s")
    return ca, idents


def make_channel(ident, clock, transport=None, **kw):
    trust = TrustStore(ident.ca_public, fleet="lab", now_ms=clock)
    return SignedChannel(transport or InprocTransport(client_id=ident.device_id), ident, trust,
                         hlc=HybridClock(clock), now_ms=clock, **kw)


def acquainted(ids):
    """Channels of devices a and b, each holding the other's certificate."""
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    a.admit(birth_message(b))
    b.admit(birth_message(a))
    return a, b


def birth_message(channel, retain=True):
    env = channel.seal("state", {"session": 1, "cert": channel.identity.certificate.to_dict()})
    return Message("igris/lab/node/x/state", env.encode(), qos=1, retain=retain)


def test_birth_teaches_key_then_heartbeats_are_accepted(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    hb = b.seal("state", {"seq": 1})
    hb_msg = Message("t", hb.encode())
    assert a.admit(hb_msg) is None
    assert a.dropped["unknown_key"] == 1
    assert a.admit(birth_message(b)).src == "b"
    hb2 = Message("t", b.seal("state", {"seq": 2}).encode())
    assert a.admit(hb2).body == {"seq": 2}
    assert a.accepted == 2


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe garbage", "not_json"),
    (b'{"v":1,"id":"x"', "not_json"),
    (b"[1,2,3]", "not_envelope"),
    (b"x" * 70_000, "oversize"),
    (b'{"v":9,"id":"x","src":"b","ts":[1,0],"kind":"state","body":{}}', "bad_version"),
    # a sig with no UTF-8 form: once a UnicodeEncodeError out of the gate
    (b'{"body":{},"id":"x","kind":"state","sig":"\\ud800","src":"b","ts":[1,0],"v":1}',
     "not_json"),
])
def test_malformed_payloads_are_dropped_and_counted(fleet, payload, reason):
    _, ids = fleet
    a = make_channel(ids["a"], Clock(NOW))
    assert a.admit(Message("t", payload)) is None
    assert a.dropped[reason] == 1


def test_unsigned_and_forged_envelopes_are_dropped(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    a.admit(birth_message(b))
    unsigned = Envelope("b", "state", {"x": 1}, [NOW, 0])
    assert a.admit(Message("t", unsigned.encode())) is None
    assert a.dropped["unsigned"] == 1
    # Signed by a's key but claiming to be b.
    forged = sign_envelope(Envelope("b", "state", {"x": 1}, [NOW, 0]), ids["a"].sign)
    assert a.admit(Message("t", forged.encode())) is None
    # A valid signature moved onto a changed body.
    env = b.seal("state", {"x": 1})
    moved = Envelope("b", "state", {"x": 2}, env.ts, id=env.id, sig=env.sig)
    assert a.admit(Message("t", moved.encode())) is None
    assert a.dropped["bad_signature"] == 2


def test_pair_keys_agree_between_the_two_and_differ_for_anyone_else(fleet, tmp_path):
    ca, ids = fleet
    enroll(tmp_path / "c", ca, "c", now_ms=NOW, days=10)
    c = Identity.load(tmp_path / "c")
    ab = ids["a"].pair_key(ids["b"].certificate.box_key)
    assert len(ab) == 32
    assert ab == ids["b"].pair_key(ids["a"].certificate.box_key)
    assert ab != c.pair_key(ids["b"].certificate.box_key)
    assert ab != ids["a"].pair_key(c.certificate.box_key)


def test_a_reply_maced_for_us_is_accepted_and_nobody_else_can_check_or_forge_it(
        fleet, tmp_path):
    ca, ids = fleet
    enroll(tmp_path / "c", ca, "c", now_ms=NOW, days=10)
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    c = make_channel(Identity.load(tmp_path / "c"), clock)
    for x, y in ((a, b), (b, a), (c, b), (b, c), (c, a)):
        x.admit(birth_message(y))  # everyone knows everyone's certificate
    reply = b.seal("reply", {"re": "r1", "ok": True}, mac_for="a")
    assert reply.mac is not None and reply.sig is None
    wire = reply.encode()
    assert b'"mac":' in wire and b'"sig":' not in wire
    assert c.admit(Message("t", wire)) is None  # c's key with b is another key
    assert c.dropped["bad_signature"] == 1
    assert a.admit(Message("t", wire)).body == {"re": "r1", "ok": True}
    assert a.admit(Message("t", wire)) is None  # the replay guard still holds
    assert a.dropped["replay"] == 1
    # A MAC moved onto a changed body, and one made by c claiming to be b.
    other = b.seal("reply", {"re": "r2", "ok": True}, mac_for="a")
    moved = Envelope("b", "reply", {"re": "r2", "ok": False}, other.ts, id=other.id,
                     mac=other.mac)
    assert a.admit(Message("t", moved.encode())) is None
    forged = c.seal("reply", {"re": "r3", "ok": True}, mac_for="a")
    forged = Envelope("b", "reply", forged.body, forged.ts, id=forged.id, mac=forged.mac)
    assert a.admit(Message("t", forged.encode())) is None
    assert a.dropped["bad_signature"] == 2


def test_only_replies_may_be_maced(fleet):
    _, ids = fleet
    a, b = acquainted(ids)
    with pytest.raises(ValueError, match="only replies"):
        b.seal("state", {}, mac_for="a")
    # A state MACed under the right pair key is still refused: it must be signed.
    key = ids["b"].pair_key(ids["a"].certificate.box_key)
    env = Envelope("b", "state", {"x": 1}, [NOW, 0])
    env = mac_envelope(env, key)
    assert a.admit(Message("t", env.encode())) is None
    assert a.dropped["unsigned"] == 1


def test_a_reply_for_a_peer_whose_certificate_is_unknown_is_signed(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    a.admit(birth_message(b))
    reply = b.seal("reply", {"ok": True}, mac_for="a")  # b never saw a's certificate
    assert reply.sig is not None and reply.mac is None
    assert a.admit(Message("t", reply.encode())).body == {"ok": True}


def test_a_blocked_sender_s_maced_reply_is_refused(fleet):
    _, ids = fleet
    a, b = acquainted(ids)
    a.trust.set_blocked({"b": None}, {})
    assert a.admit(Message("t", b.seal("reply", {}, mac_for="a").encode())) is None
    assert a.dropped["blocked"] == 1


def test_certificate_from_a_foreign_ca_is_refused(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a = make_channel(ids["a"], clock)
    s = SignedChannel(InprocTransport(client_id="s"), ids["stranger"],
                      TrustStore(ids["stranger"].ca_public, fleet="lab", now_ms=clock),
                      hlc=HybridClock(clock), now_ms=clock)
    assert a.admit(birth_message(s)) is None
    assert a.dropped["bad_certificate"] == 1


def test_someone_elses_certificate_in_a_birth_is_refused(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    env = sign_envelope(
        Envelope("a", "state", {"cert": ids["b"].certificate.to_dict()}, [NOW, 0]),
        ids["a"].sign,
    )
    assert a.admit(Message("t", env.encode(), retain=True)) is None
    assert a.dropped["bad_certificate"] == 1
    assert b.accepted == 0


def test_a_certificate_that_is_not_an_object_is_refused(fleet):
    _, ids = fleet
    a = make_channel(ids["a"], Clock(NOW))
    env = sign_envelope(Envelope("b", "cmd", {"cert": "b's, trust me"}, [NOW, 0]),
                        ids["b"].sign)
    assert a.admit(Message("t", env.encode())) is None
    assert a.dropped["bad_certificate"] == 1


def test_a_certificate_seen_before_is_learned_again_once_the_store_holds_another(
        fleet, tmp_path):
    # Commands carry the caller's certificate every time; the channel skips learning
    # the one it learned last, but only while the trust store still holds it.
    ca, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    enroll(tmp_path / "b-renewed", ca, "b", now_ms=NOW, days=10)
    renewed = Identity.load(tmp_path / "b-renewed")
    old_cert = ids["b"].certificate.to_dict()

    def command(n: int) -> Message:
        return Message("t", b.seal("cmd", {"n": n, "cert": old_cert}).encode())

    assert a.admit(command(1)).body["n"] == 1
    assert a.admit(command(2)).body["n"] == 2
    a.trust.learn(renewed.certificate)  # from b's birth, say: a new key for "b"
    assert a.trust.verify_key("b") == renewed.certificate.sign_key
    # Skipping the old certificate now would check b's signature with the new key.
    assert a.admit(command(3)).body["n"] == 3
    assert a.trust.verify_key("b") == ids["b"].certificate.sign_key
    assert a.dropped == {}


def test_replay_and_clock_skew_are_refused_for_live_messages(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock, skew_ms=1000), make_channel(ids["b"], clock)
    a.admit(birth_message(b))
    msg = Message("t", b.seal("cmd", {"n": 1}).encode())
    assert a.admit(msg) is not None
    assert a.admit(msg) is None
    assert a.dropped["replay"] == 1
    clock.ms += 5000
    assert a.admit(Message("t", b.seal("cmd", {"n": 2}).encode())) is not None
    old = b.seal("cmd", {"n": 3})
    clock.ms += 5000
    assert a.admit(Message("t", old.encode())) is None
    assert a.dropped["clock_skew"] == 1


def test_retained_birth_and_will_death_may_be_old(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock, skew_ms=1000), make_channel(ids["b"], clock)
    birth = birth_message(b)
    death = Message("t", b.seal("death", {"session": 1}).encode(), retain=False)
    clock.ms += 86_400_000
    assert a.admit(birth) is not None
    assert a.admit(birth) is not None  # redelivered on resubscribe: not a replay
    assert a.admit(death).kind == "death"


def test_expired_certificate_stops_acceptance(fleet):
    _, ids = fleet
    clock = Clock(NOW)
    a, b = make_channel(ids["a"], clock), make_channel(ids["b"], clock)
    a.admit(birth_message(b))
    clock.ms += 11 * 86_400_000
    assert a.admit(Message("t", b.seal("state", {}).encode(), retain=True)) is None
    assert a.dropped["expired"] == 1


def test_channel_round_trip_over_inproc_transport(fleet):
    _, ids = fleet

    async def scenario():
        hub = InprocBroker()
        clock = Clock(NOW)
        a = make_channel(ids["a"], clock, InprocTransport(hub, client_id="a"))
        b = make_channel(ids["b"], clock, InprocTransport(hub, client_id="b"))
        await a.transport.start()
        await b.transport.start()
        got = asyncio.get_running_loop().create_future()
        await a.subscribe("igris/lab/node/+/state", lambda env, msg: got.done() or
                          got.set_result(env))
        await b.publish("igris/lab/node/b/state", "state",
                        {"cert": ids["b"].certificate.to_dict()}, retain=True)
        env = await asyncio.wait_for(got, 2)
        await a.transport.stop()
        await b.transport.stop()
        return env

    env = asyncio.run(scenario())
    assert env.src == "b"
