"""Certificate chains, roles and groups, CA rotation, and the trust store's blocking hook."""

import pytest

from agent.compat import b64url_encode
from agent.errors import CertificateInvalid, EnvelopeRejected, PolicyRejected
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll, key_id
from agent.identity.trust import TrustAnchor
from agent.security_mesh.auth import (
    anchors_from_policy,
    check_certificate,
    require_group,
    require_role,
    signer_certificate,
)
from agent.transport import InprocTransport
from agent.transport.base import Message
from agent.wire import HybridClock
from tests.support.clock import Clock

NOW = 1_800_000_000_000
HOUR = 3_600_000
DAY = 86_400_000


@pytest.fixture
def pki(tmp_path):
    """An old and a new fleet CA, a device under each, and an operator under the old one."""
    old = FleetCa.init(tmp_path / "old-ca", "lab")
    new = FleetCa.init(tmp_path / "new-ca", "lab")
    enroll(tmp_path / "d-old", old, "d-old", now_ms=NOW, days=10, groups=("kitchen",))
    enroll(tmp_path / "d-new", new, "d-new", now_ms=NOW, days=10)
    enroll(tmp_path / "op", old, "op", now_ms=NOW, days=10, role="operator")
    ids = {name: Identity.load(tmp_path / name) for name in ("d-old", "d-new", "op")}
    return old, new, ids


def rotation_policy(old, new, until_ms):
    return {"version": 2, "trust": {"ca": [
        {"key": b64url_encode(new.public_key)},
        {"key": b64url_encode(old.public_key), "until_ms": until_ms},
    ]}}


def channel_for(ident, clock):
    trust = TrustStore(ident.ca_public, fleet="lab", now_ms=clock)
    return SignedChannel(InprocTransport(client_id=ident.device_id), ident, trust,
                         hlc=HybridClock(clock), now_ms=clock)


def birth(channel):
    env = channel.seal("state", {"cert": channel.identity.certificate.to_dict()})
    return Message("igris/lab/node/x/state", env.encode(), retain=True)


def test_old_ca_is_trusted_during_the_rotation_window_and_refused_after(pki):
    old, new, ids = pki
    clock = Clock(NOW)
    trust = TrustStore(old.public_key, fleet="lab", now_ms=clock)
    trust.set_anchors(anchors_from_policy(rotation_policy(old, new, NOW + HOUR), old.public_key))
    trust.learn(ids["d-old"].certificate.to_dict())
    trust.learn(ids["d-new"].certificate.to_dict())
    assert trust.verify_key("d-old") == ids["d-old"].certificate.sign_key
    assert trust.verify_key("d-new") == ids["d-new"].certificate.sign_key

    clock.ms = NOW + HOUR
    with pytest.raises(EnvelopeRejected) as excinfo:
        trust.verify_key("d-old")  # learnt while trusted: stops verifying all the same
    assert excinfo.value.reason == "expired"
    assert trust.verify_key("d-new") == ids["d-new"].certificate.sign_key
    with pytest.raises(CertificateInvalid, match="rotation ended"):
        trust.learn(ids["op"].certificate)


def test_messages_follow_the_rotation_through_the_channel(pki):
    old, new, ids = pki
    clock = Clock(NOW)
    receiver = channel_for(ids["d-new"], clock)
    receiver.trust.set_anchors(
        anchors_from_policy(rotation_policy(old, new, NOW + HOUR), ids["d-new"].ca_public))
    sender = channel_for(ids["d-old"], clock)
    assert receiver.admit(birth(sender)).src == "d-old"
    clock.ms = NOW + HOUR + 1
    assert receiver.admit(birth(sender)) is None
    assert receiver.dropped["expired"] == 1


def test_without_a_trust_section_only_the_own_ca_is_trusted(pki):
    old, _new, ids = pki
    anchors = anchors_from_policy({"version": 3}, old.public_key)
    assert anchors == (TrustAnchor(old.public_key),)
    trust = TrustStore(old.public_key, fleet="lab", now_ms=Clock(NOW))
    trust.set_anchors(anchors)
    with pytest.raises(CertificateInvalid, match="does not trust"):
        trust.learn(ids["d-new"].certificate)


def test_a_ca_dropped_from_the_anchors_stops_its_certificates_at_once(pki):
    old, new, ids = pki
    trust = TrustStore(old.public_key, fleet="lab", now_ms=Clock(NOW))
    trust.learn(ids["d-old"].certificate)
    trust.set_anchors([TrustAnchor(new.public_key)])
    with pytest.raises(EnvelopeRejected) as excinfo:
        trust.verify_key("d-old")
    assert excinfo.value.reason == "unknown_key"
    assert "no longer trusted" in str(excinfo.value)


def test_check_certificate_walks_chain_window_fleet_role_and_group(pki):
    old, new, ids = pki
    anchors = [TrustAnchor(old.public_key)]
    cert = ids["d-old"].certificate
    assert check_certificate(cert.to_dict(), anchors, NOW, fleet="lab", roles=("device",),
                             group="kitchen") == cert
    with pytest.raises(CertificateInvalid, match="not valid yet"):
        check_certificate(cert, anchors, cert.not_before_ms - 1, fleet="lab")
    with pytest.raises(CertificateInvalid, match="expired"):
        check_certificate(cert, anchors, NOW + 10 * DAY, fleet="lab")
    with pytest.raises(CertificateInvalid, match="fleet 'lab', not 'other'"):
        check_certificate(cert, anchors, NOW, fleet="other")
    with pytest.raises(CertificateInvalid, match="this needs 'operator'"):
        check_certificate(cert, anchors, NOW, fleet="lab", roles=("operator",))
    with pytest.raises(CertificateInvalid, match="not in group 'garage'"):
        check_certificate(cert, anchors, NOW, fleet="lab", group="garage")
    with pytest.raises(CertificateInvalid, match=f"issued by CA {key_id(new.public_key)}"):
        check_certificate(ids["d-new"].certificate, anchors, NOW, fleet="lab")


def test_role_and_group_checks_name_what_is_missing(pki):
    _old, _new, ids = pki
    op = ids["op"].certificate
    assert require_role(op, "operator", "scheduler") is op
    with pytest.raises(CertificateInvalid, match="'d-old' has role 'device'; this needs "
                                                 "'operator' or 'scheduler'"):
        require_role(ids["d-old"].certificate, "operator", "scheduler")
    assert require_group(ids["d-old"].certificate, "kitchen").subject == "d-old"
    with pytest.raises(CertificateInvalid, match=r"its groups: none"):
        require_group(op, "kitchen")


def test_signer_certificate_needs_a_learnt_certificate_with_the_role(pki):
    old, _new, ids = pki
    trust = TrustStore(old.public_key, fleet="lab", now_ms=Clock(NOW))
    with pytest.raises(CertificateInvalid, match="no certificate known for 'op'"):
        signer_certificate(trust, "op", "operator")
    trust.learn(ids["op"].certificate)
    trust.learn(ids["d-old"].certificate)
    assert signer_certificate(trust, "op", "operator").role == "operator"
    assert signer_certificate(trust, "d-old").role == "device"
    with pytest.raises(CertificateInvalid, match="this needs 'operator'"):
        signer_certificate(trust, "d-old", "operator")


def _key(ca):
    return b64url_encode(ca.public_key)


@pytest.mark.parametrize(("trust", "message"), [
    ({"ca": []}, "non-empty list"),
    ({"ca": [{"key": "nope"}]}, r"trust.ca\[0\].key: expected the base64url text"),
    ({"ca": [{"kee": "x"}]}, r"trust.ca\[0\]: expected"),
    ({"ca": ["x"]}, r"trust.ca\[0\]: expected"),
    ({"keys": []}, 'expected {"ca"'),
    ("old", 'expected {"ca"'),
])
def test_bad_trust_sections_are_rejected_with_the_path(pki, trust, message):
    old, _new, _ids = pki
    with pytest.raises(PolicyRejected, match=message):
        anchors_from_policy({"version": 2, "trust": trust}, old.public_key)


def test_trust_sections_that_would_strand_the_fleet_are_rejected(pki):
    old, new, _ids = pki
    with pytest.raises(PolicyRejected, match="listed twice"):
        anchors_from_policy({"trust": {"ca": [{"key": _key(new)}, {"key": _key(new)}]}},
                            old.public_key)
    with pytest.raises(PolicyRejected, match="every CA has an until_ms"):
        anchors_from_policy({"trust": {"ca": [{"key": _key(new), "until_ms": NOW}]}},
                            old.public_key)
    with pytest.raises(PolicyRejected, match="until_ms: expected wall-clock ms"):
        anchors_from_policy({"trust": {"ca": [{"key": _key(new)},
                                              {"key": _key(old), "until_ms": "soon"}]}},
                            old.public_key)


def test_operator_certificate_in_any_kind_of_body_teaches_its_key(pki):
    _old, _new, ids = pki
    clock = Clock(NOW)
    device, operator = channel_for(ids["d-old"], clock), channel_for(ids["op"], clock)
    env = operator.seal("policy", {"policy": {"version": 2},
                                   "cert": ids["op"].certificate.to_dict()})
    assert device.admit(Message("igris/lab/policy", env.encode(), retain=True)).src == "op"
    # Someone else's certificate in the body does not let the sender pass as them.
    forged = device.seal("block", {"cert": ids["op"].certificate.to_dict()})
    assert operator.admit(Message("igris/lab/block", forged.encode())) is None
    assert operator.dropped["bad_certificate"] == 1


def test_blocked_device_or_key_is_refused_until_its_block_expires(pki):
    old, _new, ids = pki
    clock = Clock(NOW)
    trust = TrustStore(old.public_key, fleet="lab", now_ms=clock)
    trust.learn(ids["d-old"].certificate)
    trust.learn(ids["op"].certificate)
    trust.set_blocked({"d-old": NOW + HOUR}, {key_id(ids["op"].certificate.sign_key): None})
    for subject in ("d-old", "op"):
        assert trust.is_blocked(subject)
        with pytest.raises(EnvelopeRejected) as excinfo:
            trust.verify_key(subject)
        assert excinfo.value.reason == "blocked"
    assert not trust.is_blocked("someone-else")
    clock.ms = NOW + HOUR
    assert not trust.is_blocked("d-old")
    assert trust.verify_key("d-old") == ids["d-old"].certificate.sign_key
    assert trust.is_blocked("op")
    trust.set_blocked({}, {})
    assert trust.verify_key("op") == ids["op"].certificate.sign_key
