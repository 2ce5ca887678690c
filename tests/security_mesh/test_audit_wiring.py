"""What reaches the ledger on its own: certificates first seen (once), and the gate's
drops tallied by claimed source. Real identities, channel, trust store, ledger."""

from __future__ import annotations

from agent.db import Database
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.security_mesh import AuthFailureTally, CertificateLog, Ledger
from agent.transport import InprocTransport
from agent.transport.base import Message
from agent.wire import Envelope, HybridClock

NOW = 1_800_000_000_000


def clock() -> int:
    return NOW


def device(tmp_path, ca, name, **kw):
    enroll(tmp_path / name, ca, name, now_ms=NOW, **kw)
    return Identity.load(tmp_path / name)


def stack(tmp_path, ident):
    """A device's ledger, trust store (recording certificates) and channel (tallying drops)."""
    db = Database.open(tmp_path / f"{ident.device_id}.db")
    hlc = HybridClock(clock)
    ledger = Ledger(db, ident, hlc)
    trust = TrustStore(ident.ca_public, fleet="lab", now_ms=clock)
    trust.on_learn = CertificateLog(ledger)
    channel = SignedChannel(InprocTransport(client_id=ident.device_id), ident, trust, hlc=hlc,
                            now_ms=clock)
    tally = AuthFailureTally(ledger)
    channel.on_drop = tally.add
    return db, ledger, channel, tally


def birth(channel: SignedChannel) -> Message:
    env = channel.seal("state", {"session": 1, "cert": channel.identity.certificate.to_dict()})
    return Message("igris/lab/node/x/state", env.encode(), retain=True)


def test_each_certificate_is_recorded_once_even_across_restarts(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    a, b = device(tmp_path, ca, "a"), device(tmp_path, ca, "b", groups=("g",))
    db, ledger, channel, _ = stack(tmp_path, a)
    (tmp_path / "other").mkdir()
    _, _, b_channel, _ = stack(tmp_path / "other", b)
    for _ in range(3):
        assert channel.admit(birth(b_channel)) is not None
    certs = [e.body for e in ledger.entries(limit=100) if e.kind == "cert"]
    assert [(c["subject"], c["groups"]) for c in certs] == [("a", []), ("b", ["g"])]
    db.close()
    # A restart: a fresh trust store learns both again; nothing new is written.
    db, ledger, channel, _ = stack(tmp_path, a)
    channel.admit(birth(b_channel))
    assert [e.kind for e in ledger.entries(limit=100)] == ["cert", "cert"]
    # Re-enrolled (new serial): that is a new certificate, recorded.
    enroll(tmp_path / "b", ca, "b", now_ms=NOW + 1, groups=("g", "h"))
    b2 = Identity.load(tmp_path / "b")
    _, _, b2_channel, _ = stack(tmp_path / "other", b2)
    channel.admit(birth(b2_channel))
    assert [e.body["groups"] for e in ledger.entries(limit=100)][-1] == ["g", "h"]
    assert ledger.verify().ok
    db.close()


def test_gate_drops_are_tallied_by_claimed_source_into_one_entry(tmp_path):
    ca = FleetCa.init(tmp_path / "ca", "lab")
    a, b = device(tmp_path, ca, "a"), device(tmp_path, ca, "b")
    db, ledger, channel, tally = stack(tmp_path, a)
    (tmp_path / "other").mkdir()
    _, _, b_channel, _ = stack(tmp_path / "other", b)
    channel.admit(birth(b_channel))
    size_before = len(ledger)
    forged = Envelope("b", "state", {"seq": 1}, [NOW, 0])
    forged.sig = "A" * 86
    for _ in range(50):
        channel.admit(Message("t", forged.encode()))
        channel.admit(Message("t", b"\xff garbage"))
    assert tally.pending == 100
    entry = tally.flush()
    assert entry.kind == "auth_failures"
    assert entry.body["by_reason"] == {"bad_signature": 50, "not_json": 50}
    sources = {t["source"] for t in entry.body["top"]}
    assert sources == {"b", "(unparsed)"}
    assert len(ledger) == size_before + 1  # a hundred drops, one entry
    db.close()
