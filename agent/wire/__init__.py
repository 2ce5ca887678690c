"""Portable wire layer: envelopes, topics, hybrid logical clock, replay guard.

Runs unchanged on CPython and MicroPython (tested on both); the lite agent
imports it, so full and lite devices cannot drift apart on the wire.
"""

from agent.wire.envelope import (
    KINDS,
    MAX_BYTES,
    Envelope,
    check_skew,
    mac_envelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
    verify_envelope_mac,
)
from agent.wire.hlc import HybridClock, compare_ts
from agent.wire.replay import ReplayGuard
from agent.wire.topics import ParsedTopic, Topics, check_name, matches

__all__ = [
    "KINDS", "MAX_BYTES", "Envelope", "HybridClock", "ParsedTopic", "ReplayGuard", "Topics",
    "check_name", "check_skew", "compare_ts", "mac_envelope", "matches", "parse_envelope",
    "sign_envelope", "verify_envelope", "verify_envelope_mac",
]
