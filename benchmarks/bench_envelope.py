"""Envelope sign+encode and parse+verify rates against raw PyNaCl in the same run.

Targets (issue 2): sign+encode >= 0.8x raw Ed25519 sign; parse+verify
(the full gate a received message goes through: size, JSON, structure,
canonical re-encoding, signature, skew window, replay guard) >= 0.8x raw
Ed25519 verify. Bodies are about 256 bytes, like a heartbeat.

    python benchmarks/bench_envelope.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nacl.signing

from agent.compat import wall_ms
from agent.identity import FleetCa, Identity, SignedChannel, TrustStore, enroll
from agent.transport import InprocTransport
from agent.transport.base import Message
from agent.wire import HybridClock

BODY = {
    "session": 12, "seq": 4711,
    "health": {"status": "healthy", "cpu_percent": 12.5, "memory_percent": 41.2,
               "max_temperature_c": 48.3, "load_average": [0.31, 0.22, 0.18],
               "battery": None, "gpio": {"power_save": False}},
    "uptime_s": 86400,
}


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` (best of three runs of ``seconds / 3``)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(200):
                fn()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    ca = FleetCa.init(tmp / "ca", "bench")
    enroll(tmp / "dev", ca, "bench-1", now_ms=wall_ms())
    ident = Identity.load(tmp / "dev")
    channel = SignedChannel(
        InprocTransport(client_id="bench-1"), ident,
        TrustStore(ident.ca_public, fleet="bench", now_ms=wall_ms),
        hlc=HybridClock(), now_ms=wall_ms,
    )
    body_bytes = json.dumps(BODY).encode()
    raw_key = nacl.signing.SigningKey.generate()
    raw_msg = body_bytes.ljust(256, b" ")
    raw_sig = raw_key.sign(raw_msg).signature
    raw_verify_key = raw_key.verify_key

    raw_sign_rate = rate(lambda: raw_key.sign(raw_msg), args.seconds)
    sign_rate = rate(lambda: channel.seal("state", BODY).encode(), args.seconds)

    raw_verify_rate = rate(lambda: raw_verify_key.verify(raw_msg, raw_sig), args.seconds)
    # Distinct envelopes (the replay guard would refuse repeats), made up front.
    count = int(raw_verify_rate * args.seconds * 1.5) + 1000
    messages = iter([Message("t", channel.seal("state", BODY).encode()) for _ in range(count)])
    verify_rate = rate(lambda: channel.admit(next(messages)), args.seconds)
    assert channel.dropped.total() == 0, channel.dropped

    results = {
        "sign_encode_per_s": round(sign_rate),
        "raw_sign_per_s": round(raw_sign_rate),
        "sign_ratio": round(sign_rate / raw_sign_rate, 3),
        "parse_verify_per_s": round(verify_rate),
        "raw_verify_per_s": round(raw_verify_rate),
        "verify_ratio": round(verify_rate / raw_verify_rate, 3),
        "envelope_bytes": len(channel.seal("state", BODY).encode()),
    }
    if args.json:
        print(json.dumps(results))
        return
    print(f"envelope size             {results['envelope_bytes']} bytes")
    print(f"sign+encode               {sign_rate:10.0f}/s   raw PyNaCl sign   "
          f"{raw_sign_rate:10.0f}/s   ratio {results['sign_ratio']:.2f} (target >= 0.80)")
    print(f"parse+verify (full gate)  {verify_rate:10.0f}/s   raw PyNaCl verify "
          f"{raw_verify_rate:10.0f}/s   ratio {results['verify_ratio']:.2f} (target >= 0.80)")


if __name__ == "__main__":
    main()
