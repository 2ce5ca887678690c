"""Device identity: keys, fleet CA, certificates, enrollment, trust and signed messaging."""

from agent.identity.ca import FleetCa, read_public_key
from agent.identity.certificate import Certificate, key_id, verify_certificate
from agent.identity.channel import SignedChannel
from agent.identity.enroll import enroll
from agent.identity.identity import Identity
from agent.identity.layout import RootLayout
from agent.identity.trust import TrustAnchor, TrustStore, verify_chain

__all__ = [
    "Certificate", "FleetCa", "Identity", "RootLayout", "SignedChannel", "TrustAnchor",
    "TrustStore", "enroll", "key_id", "read_public_key", "verify_certificate", "verify_chain",
]
