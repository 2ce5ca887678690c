"""The ledger: hash chain and signatures, batched appends, and every kind of tampering.

Tampering is done the way an intruder would: by editing the SQLite file with
``sqlite3`` behind the agent's back, then verifying on a fresh connection.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nacl.signing
import pytest

from agent.cli import main
from agent.compat import b64url_encode, canonical_json, sha256
from agent.db import Database
from agent.errors import LedgerError, TopicInvalid
from agent.identity import key_id
from agent.security_mesh import (
    GENESIS,
    AuthFailureTally,
    Ledger,
    read_entries,
    verify_ledger,
)
from agent.wire import HybridClock

NOW = 1_800_000_000_000
REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, ms):
        self.ms = ms

    def __call__(self):
        self.ms += 7
        return self.ms


@pytest.fixture
def ledger(db, identity):
    return Ledger(db, identity, HybridClock(Clock(NOW)))


def keys_of(identity):
    return {key_id(identity.certificate.sign_key): identity.certificate.sign_key}


def fill(ledger, n=6):
    return ledger.append_many(
        [("command", {"who": "op-1", "what": f"cmd-{i}", "result": "ok"}) for i in range(n)]
    )


def canonical_hash(seq, prev, ts, kind, body, author):
    """The contract, computed independently of the ledger module."""
    return sha256(canonical_json({
        "seq": seq, "prev": b64url_encode(prev), "ts": list(ts), "kind": kind,
        "body": body, "author": author,
    }))


def tamper(path, *statements):
    conn = sqlite3.connect(path)
    with conn:
        for sql, *params in statements:
            conn.execute(sql, *params)
    conn.close()


def row(path, seq):
    conn = sqlite3.connect(path)
    found = conn.execute(
        "SELECT seq, prev, hash, ts_ms, ts_counter, kind, body, author, sig FROM ledger "
        "WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    return found


# --------------------------------------------------------------------------- appending


def test_entry_hash_is_sha256_of_canonical_entry_and_signed_by_the_device(ledger, identity):
    body = {"z": 1, "a": "é\n", "nested": {"b": [1.5, None, True]}}
    entry = ledger.append("cert", body)
    assert entry.seq == 1 and entry.prev == GENESIS
    assert entry.author == key_id(identity.certificate.sign_key)
    assert entry.hash == canonical_hash(1, GENESIS, entry.ts, "cert", body, entry.author)
    nacl.signing.VerifyKey(identity.certificate.sign_key).verify(entry.hash, entry.sig)
    assert entry.body == body


def test_append_many_chains_entries_in_one_transaction(ledger, db):
    entries = fill(ledger, 5)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert [e.prev for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert [e.ts for e in entries] == sorted(e.ts for e in entries)
    assert len(ledger) == 5 and ledger.head() == (5, entries[-1].hash)
    assert ledger.entries(after_seq=3) == entries[3:]
    assert ledger.entries(limit=2) == entries[:2]
    assert ledger.head_at([0, 2, 9]) == {0: GENESIS, 2: entries[1].hash}
    assert ledger.append_many([]) == []


def test_the_entry_keeps_its_own_body_when_the_caller_changes_theirs(ledger):
    body = {"n": 1}
    entry = ledger.append("policy", body)
    body["n"] = 2
    assert entry.body == {"n": 1} == ledger.entries()[0].body


def test_a_bad_item_leaves_the_whole_batch_unwritten(ledger):
    fill(ledger, 2)
    with pytest.raises(TopicInvalid):
        ledger.append_many([("command", {"ok": 1}), ("bad kind!", {})])
    with pytest.raises(TypeError, match="must be a dict"):
        ledger.append_many([("command", {"ok": 1}), ("command", ["not", "a", "dict"])])
    with pytest.raises(ValueError, match="over the"):
        ledger.append("command", {"blob": "x" * 70_000})
    assert len(ledger) == 2


def test_entries_roll_back_with_the_callers_transaction(ledger, db, identity):
    fill(ledger, 2)
    with pytest.raises(RuntimeError), db.transaction():
        db.set_meta("policy", "v2")
        ledger.append("policy", {"version": 2})
        raise RuntimeError("policy could not be applied")
    assert len(ledger) == 2 and db.get_meta("policy") is None
    assert ledger.append("policy_rejected", {"version": 2}).seq == 3
    assert ledger.verify().ok


# --------------------------------------------------------------------------- verifying


def test_empty_and_intact_ledgers_verify(ledger, db, identity):
    report = verify_ledger(db.path, keys_of(identity))
    assert (report.ok, report.size, report.head, report.bad_seq) == (True, 0, GENESIS, None)
    entries = fill(ledger)
    report = ledger.verify()
    assert report.ok and report.size == 6 and report.head == entries[-1].hash
    assert report.reason is None


def test_verify_reads_only_what_is_committed_while_the_agent_writes(ledger, db):
    fill(ledger, 3)
    with db.transaction():
        ledger.append("command", {"n": "uncommitted"})
        report = ledger.verify()  # a second connection, as from an executor or the CLI
    assert report.ok and report.size == 3
    assert ledger.verify().size == 4


def test_cutting_off_the_newest_entries_still_verifies(ledger, db):
    """A shorter chain is still a chain: checkpoints, not verify, catch this."""
    fill(ledger)
    tamper(db.path, ("DELETE FROM ledger WHERE seq > 4",))
    assert ledger.verify().ok and ledger.verify().size == 4


def _edit_body(path, identity):
    tamper(path, ("UPDATE ledger SET body = ? WHERE seq = 3", ('{"who":"nobody"}',)))


def _reformat_body(path, identity):
    # Same JSON meaning, other bytes: still an edit of what was signed.
    body = row(path, 3)[6]
    tamper(path, ("UPDATE ledger SET body = ? WHERE seq = 3", (body.replace(",", ", "),)))


def _edit_time(path, identity):
    tamper(path, ("UPDATE ledger SET ts_ms = ts_ms - 3600000 WHERE seq = 3",))


def _edit_kind(path, identity):
    tamper(path, ("UPDATE ledger SET kind = 'policy' WHERE seq = 3",))


def _delete_middle(path, identity):
    tamper(path, ("DELETE FROM ledger WHERE seq = 3",))


def _delete_two(path, identity):
    tamper(path, ("DELETE FROM ledger WHERE seq IN (3, 4)",))


def _delete_first(path, identity):
    tamper(path, ("DELETE FROM ledger WHERE seq = 1",))


def _delete_and_renumber(path, identity):
    tamper(path, ("DELETE FROM ledger WHERE seq = 3",),
           ("UPDATE ledger SET seq = seq - 1 WHERE seq > 3",))


def _delete_first_and_renumber(path, identity):
    tamper(path, ("DELETE FROM ledger WHERE seq = 1",), ("UPDATE ledger SET seq = seq - 1",))


def _insert_copy_and_renumber(path, identity):
    # A genuine, validly signed entry (entry 5) replayed in the middle.
    copy = row(path, 5)
    tamper(path, ("UPDATE ledger SET seq = seq + 100 WHERE seq >= 3",),
           ("UPDATE ledger SET seq = seq - 99 WHERE seq >= 103",),
           ("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (3, *copy[1:])))


def _swap_rows(path, identity):
    two, four = row(path, 2), row(path, 4)
    tamper(path, ("DELETE FROM ledger WHERE seq IN (2, 4)",),
           ("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (2, *four[1:])),
           ("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (4, *two[1:])))


def _rehash_edit(path, identity):
    # Body edited and the hash recomputed (the hash is no secret), signature left.
    seq, prev, _, ts_ms, ts_c, kind, _, author, _ = row(path, 3)
    body = {"who": "nobody"}
    digest = canonical_hash(seq, prev, (ts_ms, ts_c), kind, body, author)
    tamper(path, ("UPDATE ledger SET body = ?, hash = ? WHERE seq = 3",
                  (canonical_json(body).decode(), digest)))


def _forge(path, *, claim_victim):
    """Rewrite entry 3 as an intruder with their own key would: valid hash and link."""
    attacker = nacl.signing.SigningKey.generate()
    seq, prev, _, ts_ms, ts_c, kind, _, victim, _ = row(path, 3)
    author = victim if claim_victim else key_id(bytes(attacker.verify_key))
    body = {"who": "intruder", "what": "covered tracks"}
    digest = canonical_hash(seq, prev, (ts_ms, ts_c), kind, body, author)
    tamper(path, ("UPDATE ledger SET body = ?, author = ?, hash = ?, sig = ? WHERE seq = 3",
                  (canonical_json(body).decode(), author, digest,
                   attacker.sign(digest).signature)))


def _resign_as_attacker(path, identity):
    _forge(path, claim_victim=False)


def _resign_claiming_victim(path, identity):
    _forge(path, claim_victim=True)


def _insert_forged_and_renumber(path, identity):
    attacker = nacl.signing.SigningKey.generate()
    author = key_id(bytes(attacker.verify_key))
    prev = row(path, 2)[2]
    body = {"who": "intruder"}
    digest = canonical_hash(3, prev, (NOW, 0), "command", body, author)
    tamper(path, ("UPDATE ledger SET seq = seq + 100 WHERE seq >= 3",),
           ("UPDATE ledger SET seq = seq - 99 WHERE seq >= 103",),
           ("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (3, prev, digest, NOW, 0, "command", canonical_json(body).decode(), author,
             attacker.sign(digest).signature)))


def _text_in_time(path, identity):
    tamper(path, ("UPDATE ledger SET ts_counter = 'soon' WHERE seq = 3",))


@pytest.mark.parametrize(("tampering", "bad_seq", "words"), [
    (_edit_body, 3, "entry 3 was edited"),
    (_reformat_body, 3, "entry 3 was edited"),
    (_edit_time, 3, "entry 3 was edited"),
    (_edit_kind, 3, "entry 3 was edited"),
    (_delete_middle, 3, "entry 3 is missing: the sequence jumps from 2 to 4"),
    (_delete_two, 3, "entries 3 to 4 are missing"),
    (_delete_first, 1, "entry 1 is missing"),
    (_delete_and_renumber, 3, "entry 3 does not follow entry 2"),
    (_delete_first_and_renumber, 1, "entry 1 does not start the chain"),
    (_insert_copy_and_renumber, 3, "entry 3 does not follow entry 2"),
    (_insert_forged_and_renumber, 3, "entry 3 is signed by an unknown key"),
    (_swap_rows, 2, "entry 2 does not follow entry 1"),
    (_rehash_edit, 3, "entry 3 has a bad signature"),
    (_resign_as_attacker, 3, "entry 3 is signed by an unknown key"),
    (_resign_claiming_victim, 3, "entry 3 has a bad signature"),
    (_text_in_time, 3, "entry 3 is malformed"),
])
def test_verify_names_the_first_bad_entry_and_why(ledger, db, identity, tampering, bad_seq,
                                                  words):
    entries = fill(ledger)
    tampering(db.path, identity)
    report = verify_ledger(db.path, keys_of(identity))
    assert not report.ok
    assert report.bad_seq == bad_seq
    assert words in report.reason
    assert report.size == bad_seq - 1
    assert report.head == (entries[bad_seq - 2].hash if bad_seq > 1 else GENESIS)


def test_verify_refuses_what_is_not_a_ledger(tmp_path):
    with pytest.raises(LedgerError, match="no agent database"):
        verify_ledger(tmp_path / "absent.db", {})
    assert not (tmp_path / "absent.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with pytest.raises(LedgerError, match="no ledger table"):
        verify_ledger(other, {})
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 300)
    with pytest.raises(LedgerError, match="cannot read the ledger"):
        verify_ledger(junk, {})


def test_read_entries_gives_the_newest_of_a_kind_oldest_first(ledger, db):
    fill(ledger, 4)
    ledger.append("block", {"target": "device:pi-07"})
    ledger.append("command", {"n": "last"})
    assert [e.seq for e in read_entries(db.path, limit=3)] == [4, 5, 6]
    assert [e.kind for e in read_entries(db.path, kind="block")] == ["block"]
    assert read_entries(db.path, kind="policy") == []


_APPENDER = """
import sys
from pathlib import Path
from agent.db import Database
from agent.identity import Identity
from agent.security_mesh import Ledger
from agent.wire import HybridClock
root = Path(sys.argv[1])
ledger = Ledger(Database.open(root / "igris.db"), Identity.load(root), HybridClock())
n = 0
while True:
    n += 1
    if n % 3:
        ledger.append("command", {"n": n, "pad": "x" * 200})
    else:
        ledger.append_many([("command", {"n": n, "i": i}) for i in range(50)])
    if n == 20:
        print("appending", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_kill_9_while_appending_leaves_a_ledger_that_verifies(tmp_path, identity):
    root = tmp_path / "root"
    child = subprocess.Popen(
        [sys.executable, "-c", _APPENDER, str(root)], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout.readline() == "appending\n"
        time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    report = verify_ledger(root / "igris.db", keys_of(identity))
    assert report.ok, report.reason
    assert report.size > 20
    # The agent restarting on that file carries on the same chain.
    reopened = Database.open(root / "igris.db")
    again = Ledger(reopened, identity, HybridClock())
    assert again.append("command", {"n": "after"}).seq == report.size + 1
    assert again.verify().ok
    reopened.close()


# --------------------------------------------------------------------------- floods


def test_a_flood_of_auth_failures_becomes_one_bounded_entry_per_flush(ledger):
    tally = AuthFailureTally(ledger, top=3, max_pairs=100)
    for i in range(5000):
        tally.add("bad_signature", f"src-{i % 400}")
    tally.add("unknown_key", "pi-09", count=900)
    tally.add("replay", "pi-02", count=5)
    assert tally.pending == 5905
    entry = tally.flush()
    assert len(ledger) == 1 and entry.kind == "auth_failures"
    body = entry.body
    assert body["total"] == 5905
    assert body["by_reason"] == {"bad_signature": 5000, "unknown_key": 900, "replay": 5}
    assert body["top"][0] == {"reason": "unknown_key", "source": "pi-09", "count": 900}
    assert len(body["top"]) == 3
    assert body["others"] == 5905 - sum(t["count"] for t in body["top"])
    assert len(canonical_json(body)) < 1000
    assert tally.pending == 0 and tally.flush() is None and len(ledger) == 1


def test_spoofed_sources_cannot_grow_the_tally_or_hide_a_persistent_one(ledger):
    tally = AuthFailureTally(ledger, top=2, max_pairs=10)
    for i in range(1000):
        tally.add("bad_signature", f"spoofed-{i}" + "x" * 500)
        if i % 10 == 0:
            tally.add("unknown_key", "pi-09")
        assert len(tally._pairs) <= 10
    body = tally.flush().body
    assert body["total"] == 1100
    assert body["by_reason"] == {"bad_signature": 1000, "unknown_key": 100}
    assert body["top"][0] == {"reason": "unknown_key", "source": "pi-09", "count": 100}
    assert all(len(t["source"]) <= AuthFailureTally.MAX_TEXT for t in body["top"])


# --------------------------------------------------------------------------- igris ledger


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_igris_ledger_verify_says_ok_or_names_the_first_bad_entry(tmp_path, ledger, db, capsys):
    root = str(tmp_path / "root")
    entries = fill(ledger)
    code, out, _ = run_cli(capsys, "ledger", "verify", "--root", root)
    assert code == 0 and "ok" in out and "6" in out
    code, out, _ = run_cli(capsys, "ledger", "verify", "--root", root, "--json")
    assert code == 0
    assert json.loads(out) == {"ok": True, "size": 6, "head": b64url_encode(entries[-1].hash),
                               "bad_seq": None, "reason": None}
    _edit_body(db.path, None)
    code, out, err = run_cli(capsys, "ledger", "verify", "--root", root)
    assert code == 1 and out == ""
    assert err.startswith("igris: error:") and "entry 3 was edited" in err
    assert "Traceback" not in err
    code, out, _ = run_cli(capsys, "ledger", "verify", "--root", root, "--json")
    assert code == 1 and json.loads(out)["bad_seq"] == 3


def test_igris_ledger_show_prints_the_newest_entries(tmp_path, ledger, capsys):
    root = str(tmp_path / "root")
    fill(ledger, 3)
    ledger.append("block", {"target": "device:pi-07", "reason": "stolen"})
    code, out, _ = run_cli(capsys, "ledger", "show", "--root", root, "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and "cmd-2" in lines[0] and "pi-07" in lines[1]
    code, out, _ = run_cli(capsys, "ledger", "show", "--root", root, "--kind", "block", "--json")
    (shown,) = json.loads(out)
    assert shown["seq"] == 4 and shown["body"]["reason"] == "stolen"
    code, out, _ = run_cli(capsys, "ledger", "show", "--root", root, "--kind", "policy")
    assert code == 0 and out.strip() == "(no entries)"


def test_igris_ledger_show_sums_up_a_batch_of_read_only_runs(tmp_path, ledger, capsys):
    root = str(tmp_path / "root")
    run = {"id": "r", "args": "a" * 32, "result": "b" * 32}
    runs = [{**run, "cmd": "ping", "by": "op", "ok": True}] * 12 + [
        {**run, "cmd": "status", "by": "mqtt", "ok": True},
        {**run, "cmd": "gpio.read", "by": "op", "ok": False, "error": "bad_args"}]
    ledger.append("commands", {"runs": runs})
    code, out, _ = run_cli(capsys, "ledger", "show", "--root", root, "--limit", "1")
    assert code == 0
    assert out.split("commands", 1)[1].strip() == (
        "14 read-only run(s): gpio.read x1 by op (failed), ping x12 by op, status x1 by mqtt")
    code, out, _ = run_cli(capsys, "ledger", "show", "--root", root, "--limit", "1", "--json")
    assert json.loads(out)[0]["body"]["runs"] == runs


def test_igris_ledger_explains_a_root_with_nothing_to_read(tmp_path, capsys):
    code, _, err = run_cli(capsys, "ledger", "show", "--root", str(tmp_path / "nowhere"))
    assert code == 1 and "no agent database" in err
    code, _, err = run_cli(capsys, "ledger", "verify", "--root", str(tmp_path / "nowhere"))
    assert code == 1 and "holds no certificate" in err
