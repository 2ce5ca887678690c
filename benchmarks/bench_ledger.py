"""Ledger append and full-verify rates against raw PyNaCl in the same run.

Targets (issue 3): append (signed, batched commit) >= 0.5x the raw PyNaCl
sign rate; full verify >= 0.8x the raw PyNaCl verify rate.

- Append: ``Ledger.append_many`` in batches (default 100 entries, one
  transaction and one commit each) of a realistic command record (about 200
  bytes of canonical JSON), on a real WAL database in a temp dir. Floor:
  ``nacl.signing.SigningKey.sign`` of a 32-byte message, which is what the
  ledger signs (the entry's SHA-256).
- Verify: ``verify_ledger`` over a ledger of ``--entries`` entries (default
  10 000), on its own read-only connection as the CLI and the agent's
  executor run it. Floor: ``VerifyKey.verify`` of the very same hashes and
  signatures, already in memory.

Each rate is the best of three timed runs::

    python benchmarks/bench_ledger.py [--seconds 2] [--entries 10000] [--batch 100] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nacl.signing
from _common import Janitor, Report, Target, raise_on_sigterm

from agent.compat import canonical_json, wall_ms
from agent.db import Database
from agent.identity import FleetCa, Identity, enroll, key_id
from agent.security_mesh import Ledger, verify_ledger
from agent.wire import HybridClock

APPEND_TARGET = 0.5
VERIFY_TARGET = 0.8
BODY = {
    "who": "operator:ops-alice", "what": "reboot",
    "args": {"delay_s": 5, "reason": "kernel update"},
    "cmd_id": "k3J9x0aQv1bZQyq2Lw4N7A",
    "result": {"ok": True,
               "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
}


def best_rate(run: Callable[[], int], seconds: float) -> float:
    """Items per second of ``run()`` (which returns how many it did), best of three."""
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            done += run()
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def open_ledger(root: Path, name: str) -> tuple[Ledger, Database]:
    db = Database.open(root / name)
    return Ledger(db, Identity.load(root), HybridClock()), db


def measure(tmp: Path, seconds: float, entries: int, batch: int) -> dict[str, float]:
    ca = FleetCa.init(tmp / "ca", "bench")
    root = tmp / "root"
    enroll(root, ca, "bench-1", now_ms=wall_ms())
    identity = Identity.load(root)
    public = identity.certificate.sign_key
    keys = {key_id(public): public}

    raw_key = nacl.signing.SigningKey.generate()
    message = bytes(32)  # the ledger signs a 32-byte SHA-256
    raw_sign = best_rate(lambda: (raw_key.sign(message), 1)[1], seconds)

    ledger, db = open_ledger(root, "append.db")
    items = [("command", BODY)] * batch
    append = best_rate(lambda: len(ledger.append_many(items)), seconds)
    assert ledger.verify().ok
    db.close()

    ledger, db = open_ledger(root, "verify.db")
    for start in range(0, entries, 1000):
        ledger.append_many([("command", BODY)] * min(1000, entries - start))
    pairs = db.conn.execute("SELECT hash, sig FROM ledger").fetchall()
    db.close()
    verify_key = nacl.signing.VerifyKey(public)

    def raw_verify_all() -> int:
        for digest, sig in pairs:
            verify_key.verify(digest, sig)
        return len(pairs)

    def verify_all() -> int:
        report = verify_ledger(root / "verify.db", keys)
        assert report.ok and report.size == entries, report
        return report.size

    raw_verify = best_rate(raw_verify_all, seconds)
    verify = best_rate(verify_all, seconds)
    return {
        "body_bytes": len(canonical_json(BODY)), "batch": batch, "entries": entries,
        "append_per_s": append, "raw_sign_per_s": raw_sign,
        "verify_per_s": verify, "raw_verify_per_s": raw_verify,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="time per rate, split into three runs (default 2)")
    parser.add_argument("--entries", type=int, default=10_000,
                        help="size of the ledger to verify (default 10000)")
    parser.add_argument("--batch", type=int, default=100,
                        help="entries per append_many transaction (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    raise_on_sigterm()
    try:
        with Janitor() as janitor:
            m = measure(janitor.tempdir("igledger"), args.seconds, args.entries, args.batch)
    except KeyboardInterrupt:
        print("interrupted; temp dir removed", file=sys.stderr)
        return 130

    report = Report("ledger")
    report.targets = [
        Target("ledger append (signed, batched)", m["append_per_s"], "/s", APPEND_TARGET, ">=",
               "ratio", floor=m["raw_sign_per_s"],
               ratio=m["append_per_s"] / m["raw_sign_per_s"],
               note=f"batches of {m['batch']}, {m['body_bytes']}-byte bodies; "
                    "floor: raw PyNaCl sign"),
        Target("ledger full verify", m["verify_per_s"], "/s", VERIFY_TARGET, ">=", "ratio",
               floor=m["raw_verify_per_s"], ratio=m["verify_per_s"] / m["raw_verify_per_s"],
               note=f"{m['entries']} entries; floor: raw PyNaCl verify"),
    ]
    report.details = {k: round(v) if isinstance(v, float) else v for k, v in m.items()}

    def lines() -> Iterator[str]:
        yield (f"append  {m['append_per_s']:9.0f} entries/s  (batches of {m['batch']}, "
               f"{m['body_bytes']}-byte bodies)   raw PyNaCl sign   {m['raw_sign_per_s']:9.0f}/s")
        yield (f"verify  {m['verify_per_s']:9.0f} entries/s  ({m['entries']} entries, "
               f"read-only connection)   raw PyNaCl verify {m['raw_verify_per_s']:9.0f}/s")

    report.print(args.json, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
