"""The memory store: round trips, versions, expiry, queries, keys, and every kind of tampering.

Everything runs on real SQLite files with real PyNaCl. Tampering is done as an
intruder would: with ``sqlite3`` on the file behind the store's back.
"""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import nacl.public
import nacl.secret
import pytest

from agent.compat import b64url_encode, canonical_json
from agent.db import Database
from agent.errors import (
    DocumentInvalid,
    MemoryStoreError,
    MemoryTampered,
    PoolNotFound,
    TopicInvalid,
)
from agent.identity import Identity, enroll
from agent.memory import MAX_VALUE_BYTES, MemoryStore, PoolKeys
from agent.wire import HybridClock
from tests.support.clock import Clock

NOW = 1_800_000_000_000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def store(db, identity, clock):
    return MemoryStore(db, PoolKeys(db, identity.box_key, now_ms=clock), HybridClock(clock),
                       now_ms=clock)


def fresh_store(db, identity, clock=None):
    """A store with nothing cached, as a restarted agent or a CLI command would have."""
    clock = clock or Clock(NOW)
    return MemoryStore(db, PoolKeys(db, identity.box_key), HybridClock(clock), now_ms=clock)


def tamper(db, sql, *params):
    """Change the file on a connection of its own, as someone with the file would."""
    conn = sqlite3.connect(db.path)
    try:
        changed = conn.execute(sql, params).rowcount
        conn.commit()
    finally:
        conn.close()
    assert changed >= 1, sql


def row(db, pool, key):
    return db.conn.execute(
        "SELECT version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob FROM documents "
        "WHERE pool = ? AND key = ?", (pool, key)).fetchone()


def keys_of(listing):
    return [d.key for d in listing.documents]


# --------------------------------------------------------------------------- round trips


VALUES = [
    {"a": 1, "nested": {"b": [1, 2.5, None, True, "x"]}, "empty": {}},
    [1, "two", [3.0], {"four": 4}],
    "text with ü, 🙂 and \"quotes\"\n",
    0, -12345678901234567890123, 3.14, 1e-300, True, False, None, {}, [],
]


def test_json_values_round_trip(store):
    for i, value in enumerate(VALUES):
        put = store.put("notes", f"v{i}", value)
        got = store.get("notes", f"v{i}")
        assert got == put
        assert got.value == value and type(got.value) is type(value)
        assert (got.pool, got.key, got.version, got.expires_ms) == ("notes", f"v{i}", 1, None)


def test_the_sealed_plaintext_is_the_documented_canonical_json(store, db):
    doc = store.put("notes", "kitchen/temp", {"c": 21.5, "ok": True}, ttl_s=60)
    _, ts_ms, ts_counter, expires_ms, _, key_id, blob = row(db, "notes", "kitchen/temp")
    key = store.keys.key_by_id("notes", key_id).key
    plain = nacl.secret.SecretBox(key).decrypt(blob)
    assert plain == canonical_json({
        "pool": "notes", "key": "kitchen/temp", "version": 1, "ts": [ts_ms, ts_counter],
        "expires_ms": NOW + 60_000, "deleted": False, "value": {"c": 21.5, "ok": True},
    })
    assert expires_ms == doc.expires_ms == NOW + 60_000
    # One fresh nonce per write: the same value twice seals to different bytes.
    store.put("notes", "same", 1)
    first = row(db, "notes", "same")[6]
    store.put("notes", "same", 1)
    assert row(db, "notes", "same")[6][:24] != first[:24]


def test_versions_count_up_and_a_delete_is_a_tombstone_version(store, db):
    assert store.put("notes", "a", 1).version == 1
    assert store.put("notes", "a", 2).version == 2
    assert store.delete("notes", "a") is True
    version, *_, deleted, _, _ = row(db, "notes", "a")
    assert (version, deleted) == (3, 1)
    assert store.put("notes", "a", 4).version == 4
    assert store.get("notes", "a").value == 4


def test_a_keys_writes_stay_in_clock_order_when_another_process_clock_is_behind(
        store, db, identity, clock):
    clock.ms = NOW + 60_000
    first = store.put("notes", "a", 1)
    behind = fresh_store(db, identity, Clock(NOW))       # e.g. the CLI, its clock 1 min slow
    second = behind.put("notes", "a", 2)
    assert second.ts > first.ts and second.version == 2
    third = behind.put("notes", "b", 3)                    # and its clock has moved past it
    assert third.ts > second.ts


def test_put_many_writes_all_or_nothing(store):
    docs = store.put_many("notes", [("a", 1), ("b", 2), ("a", 3)])
    assert [(d.key, d.version, d.value) for d in docs] == [("a", 1, 1), ("b", 1, 2), ("a", 2, 3)]
    assert store.get("notes", "a").value == 3
    with pytest.raises(DocumentInvalid):
        store.put_many("notes", [("c", 1), ("d", {1, 2})])
    assert store.get("notes", "c") is None
    assert store.put_many("notes", []) == []


def test_a_write_inside_a_transaction_that_rolls_back_leaves_nothing(store, db):
    with pytest.raises(RuntimeError), db.transaction():
        store.put("fresh", "a", 1)
        raise RuntimeError("the caller's other change failed")
    with pytest.raises(PoolNotFound):
        store.get("fresh", "a")
    assert store.put("fresh", "a", 2).version == 1


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize("value", [{1, 2}, object(), math.nan, math.inf, b"bytes",
                                   "x" * MAX_VALUE_BYTES])
def test_values_that_are_not_json_or_too_large_are_refused(store, value):
    with pytest.raises(DocumentInvalid, match="'notes' key 'k'"):
        store.put("notes", "k", value)


@pytest.mark.parametrize("key", ["", "a\nb", "tab\there", "x" * 257, "\ud800", 7, None])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(DocumentInvalid):
        store.put("notes", key, 1)


def test_bad_pool_names_and_ttls_are_refused(store):
    with pytest.raises(TopicInvalid):
        store.put("a/b", "k", 1)
    for ttl in (0, -1, math.nan, math.inf, True, "10"):
        with pytest.raises(DocumentInvalid, match="TTL"):
            store.put("notes", "k", 1, ttl_s=ttl)
    for ttl in (0, 1.5, -5):
        with pytest.raises(DocumentInvalid, match="TTL"):
            store.set_pool_ttl("notes", ttl)


def test_a_pool_that_does_not_exist_is_an_error_with_a_suggestion(store):
    store.put("notes", "a", 1)
    for read in (lambda: store.get("nots", "a"), lambda: store.query("nots"),
                 lambda: store.delete("nots", "a")):
        with pytest.raises(PoolNotFound, match="did you mean 'notes'"):
            read()
    assert store.get("notes", "missing") is None
    assert store.query("notes", "zzz").documents == []


# --------------------------------------------------------------------------- expiry


def test_a_document_expires_after_its_ttl_and_the_sweep_removes_it(store, clock, db):
    doc = store.put("notes", "a", 1, ttl_s=10)
    store.put("notes", "b", 2)
    assert doc.expires_ms == NOW + 10_000
    clock.ms = NOW + 9_999
    assert store.get("notes", "a").value == 1
    clock.ms = NOW + 10_000
    assert store.get("notes", "a") is None
    assert keys_of(store.query("notes")) == ["b"]
    assert store.delete("notes", "a") is False
    (info,) = store.pools()
    assert (info.documents, info.expired, info.tombstones) == (1, 1, 0)
    assert store.sweep() == 1
    assert row(db, "notes", "a") is None
    assert store.sweep() == 0
    assert store.get("notes", "b").value == 2


def test_sweep_takes_an_explicit_time(store):
    store.put("notes", "a", 1, ttl_s=1)
    store.put("notes", "b", 2)
    assert store.sweep(NOW + 999) == 0
    assert store.sweep(NOW + 1000) == 1


def test_sweep_keeps_the_newest_row_so_seqs_only_grow(store, db, clock):
    store.put("notes", "a", 1)
    store.put("notes", "b", 2, ttl_s=1)
    newest = db.conn.execute("SELECT max(seq) FROM documents").fetchone()[0]
    clock.ms = NOW + 5000
    assert store.sweep() == 0  # "b" has expired, but holds the highest seq
    assert store.get("notes", "b") is None  # reads leave it out all the same
    store.put("notes", "c", 3)
    assert db.conn.execute("SELECT seq FROM documents WHERE key = 'c'").fetchone()[0] > newest
    assert store.sweep(NOW + 5000) == 1 and row(db, "notes", "b") is None


def test_the_pool_default_ttl_applies_to_puts_without_one(store):
    store.set_pool_ttl("cache", 60)
    assert store.put("cache", "a", 1).expires_ms == NOW + 60_000
    assert store.put("cache", "b", 1, ttl_s=5).expires_ms == NOW + 5_000
    assert store.put("cache", "c", 1, ttl_s=0.0001).expires_ms == NOW + 1
    store.set_pool_ttl("cache", None)
    assert store.put("cache", "d", 1).expires_ms is None
    assert store.get("cache", "a").expires_ms == NOW + 60_000
    assert store.pools()[0].default_ttl_s is None


def test_a_tombstone_keeps_the_expiry_of_what_it_deleted(store, clock, db):
    store.put("notes", "short", 1, ttl_s=10)
    store.put("notes", "forever", 2)
    assert store.delete("notes", "short") and store.delete("notes", "forever")
    assert row(db, "notes", "short")[3] == NOW + 10_000
    clock.ms = NOW + 10_000
    assert store.sweep() == 1
    assert row(db, "notes", "short") is None
    assert row(db, "notes", "forever")[4] == 1     # kept for sync to pass on


# --------------------------------------------------------------------------- queries


def test_prefix_queries_are_in_key_order_and_leave_out_deleted_and_expired(store, clock):
    keys = ["kitchen/temp", "a", "kitchen", "kitchen/hum", "kitchen0", "kitchen/", "kitchf",
            "ki", "kitchen/ü", "kitchen/gone", "kitchen/old"]
    for key in keys:
        store.put("notes", key, key, ttl_s=5 if key == "kitchen/old" else None)
    store.delete("notes", "kitchen/gone")
    clock.ms = NOW + 5_000
    assert keys_of(store.query("notes", "kitchen/")) == [
        "kitchen/", "kitchen/hum", "kitchen/temp", "kitchen/ü"]
    assert keys_of(store.query("notes", "kitchen")) == [
        "kitchen", "kitchen/", "kitchen/hum", "kitchen/temp", "kitchen/ü", "kitchen0"]
    assert keys_of(store.query("notes")) == sorted(set(keys) - {"kitchen/gone", "kitchen/old"})
    assert [d.value for d in store.query("notes", "kitchen/h").documents] == ["kitchen/hum"]


def test_prefixes_ending_in_the_highest_code_points_still_bound_the_range(store):
    for key in ["a\ud7ff", "a\ud7ffz", "a\ue000", "b\U0010ffff", "b\U0010ffffx", "c"]:
        store.put("notes", key, 1)
    assert keys_of(store.query("notes", "a\ud7ff")) == ["a\ud7ff", "a\ud7ffz"]
    assert keys_of(store.query("notes", "b\U0010ffff")) == ["b\U0010ffff", "b\U0010ffffx"]
    assert keys_of(store.query("notes", "\U0010ffff")) == []


def test_limit_and_after_page_through_a_pool(store):
    store.put_many("notes", [(f"k{i:03}", i) for i in range(25)])
    store.put("notes", "other", 1)
    seen, after = [], None
    while True:
        page = store.query("notes", "k", limit=10, after=after)
        if not page.documents:
            break
        assert len(page.documents) <= 10
        seen += keys_of(page)
        after = page.documents[-1].key
    assert seen == [f"k{i:03}" for i in range(25)]
    assert keys_of(store.query("notes", "k", limit=2, after="a")) == ["k000", "k001"]
    with pytest.raises(ValueError):
        store.query("notes", limit=0)


def test_pools_lists_counts_ttl_and_key(store):
    store.put_many("b-pool", [("x", 1), ("y", 2), ("z", 3)])
    store.delete("b-pool", "y")
    store.set_pool_ttl("a-pool", 30)
    infos = store.pools()
    assert [p.pool for p in infos] == ["a-pool", "b-pool"]
    assert infos[0].to_dict() == {
        "pool": "a-pool", "documents": 0, "expired": 0, "tombstones": 0, "default_ttl_s": 30,
        "key_id": store.keys.key_for("a-pool").key_id, "key_versions": 1}
    assert (infos[1].documents, infos[1].tombstones) == (2, 1)


# --------------------------------------------------------------------------- tampering


@pytest.fixture
def two_docs(store):
    store.put("notes", "a", {"secret": "alpha"})
    store.put("notes", "b", {"secret": "bravo"})
    store.put("other", "a", {"secret": "other"})
    return store


def assert_tampered(store, pool, key, match):
    with pytest.raises(MemoryTampered, match=match) as caught:
        store.get(pool, key)
    assert (caught.value.pool, caught.value.key) == (pool, key)
    assert "alpha" not in str(caught.value) and "bravo" not in str(caught.value)
    listing = store.query(pool)
    assert key not in keys_of(listing)
    assert (pool, key) in [(p.pool, p.key) for p in listing.problems]
    return listing


def swap(db, table, column, where_a, where_b):
    """Exchange ``column`` between two rows (read first: an UPDATE sees its own writes)."""
    (a,) = db.conn.execute(f"SELECT {column} FROM {table} WHERE {where_a}").fetchone()
    (b,) = db.conn.execute(f"SELECT {column} FROM {table} WHERE {where_b}").fetchone()
    tamper(db, f"UPDATE {table} SET {column} = ? WHERE {where_a}", b)
    tamper(db, f"UPDATE {table} SET {column} = ? WHERE {where_b}", a)


def test_an_edited_blob_is_detected(two_docs, db):
    blob = row(db, "notes", "a")[6]
    edited = blob[:30] + bytes([blob[30] ^ 1]) + blob[31:]
    tamper(db, "UPDATE documents SET blob = ? WHERE pool = 'notes' AND key = 'a'", edited)
    listing = assert_tampered(two_docs, "notes", "a", "does not open")
    assert keys_of(listing) == ["b"]       # one bad row does not hide the rest


def test_blobs_swapped_between_two_keys_are_detected(two_docs, db):
    swap(db, "documents", "blob", "pool = 'notes' AND key = 'a'", "pool = 'notes' AND key = 'b'")
    assert_tampered(two_docs, "notes", "b", "sealed for pool 'notes' key 'a': .*moved or swapped")
    with pytest.raises(MemoryTampered, match="key 'b'"):
        two_docs.get("notes", "a")
    assert two_docs.query("notes").documents == []


def test_rows_renamed_to_each_others_keys_are_detected(two_docs, db):
    tamper(db, "UPDATE documents SET key = 'tmp' WHERE pool = 'notes' AND key = 'a'")
    tamper(db, "UPDATE documents SET key = 'a' WHERE pool = 'notes' AND key = 'b'")
    tamper(db, "UPDATE documents SET key = 'b' WHERE pool = 'notes' AND key = 'tmp'")
    assert_tampered(two_docs, "notes", "a", "moved or swapped")


def test_a_row_moved_to_another_pool_is_detected(two_docs, db):
    tamper(db, "DELETE FROM documents WHERE pool = 'other' AND key = 'a'")
    tamper(db, "UPDATE documents SET pool = 'other' WHERE pool = 'notes' AND key = 'a'")
    assert_tampered(two_docs, "other", "a", "which pool 'other' does not have")
    # ... and relabelled with the other pool's key id: it still does not open.
    other_key = two_docs.keys.key_for("other").key_id
    tamper(db, "UPDATE documents SET key_id = ? WHERE pool = 'other' AND key = 'a'", other_key)
    assert_tampered(two_docs, "other", "a", "does not open under key")


def test_an_edited_version_column_is_detected(two_docs, db):
    tamper(db, "UPDATE documents SET version = 7 WHERE pool = 'notes' AND key = 'a'")
    assert_tampered(two_docs, "notes", "a", "its version column")


@pytest.mark.parametrize("sql, match", [
    ("UPDATE documents SET ts_ms = ts_ms + 1", "its ts column"),
    ("UPDATE documents SET expires_ms = 99999999999999", "its expires_ms column"),
    ("UPDATE documents SET expires_ms = NULL", "its expires_ms column"),
    ("UPDATE documents SET expires_ms = 'never'", "its expires_ms column"),
])
def test_edited_time_or_expiry_columns_are_detected(store, db, sql, match):
    store.put("notes", "a", {"secret": "alpha"}, ttl_s=60)
    tamper(db, sql + " WHERE pool = 'notes' AND key = 'a'")
    assert_tampered(store, "notes", "a", match)


def test_a_tombstone_made_live_again_is_detected(store, db):
    store.put("notes", "a", {"secret": "alpha"})
    store.delete("notes", "a")
    tamper(db, "UPDATE documents SET deleted = 0 WHERE pool = 'notes' AND key = 'a'")
    assert_tampered(store, "notes", "a", "its deleted column")


def test_a_row_sealed_under_another_pools_key_is_detected(two_docs, db):
    """Someone holding only pool 'other's key forges a document for pool 'notes'."""
    other = two_docs.keys.key_for("other")
    version, ts_ms, ts_counter, _, _, notes_key_id, _ = row(db, "notes", "a")
    forged = nacl.secret.SecretBox(other.key).encrypt(canonical_json({
        "pool": "notes", "key": "a", "version": version, "ts": [ts_ms, ts_counter],
        "expires_ms": None, "deleted": False, "value": {"secret": "forged"}}))
    tamper(db, "UPDATE documents SET blob = ?, key_id = ? WHERE pool = 'notes' AND key = 'a'",
           bytes(forged), other.key_id)
    assert_tampered(two_docs, "notes", "a", "which pool 'notes' does not have")
    tamper(db, "UPDATE documents SET key_id = ? WHERE pool = 'notes' AND key = 'a'",
           notes_key_id)
    assert_tampered(two_docs, "notes", "a", "does not open under key")


def test_a_row_written_outside_the_agent_is_reported_not_crashed_on(two_docs, db):
    tamper(db, "UPDATE documents SET blob = 'plain text' WHERE pool = 'notes' AND key = 'a'")
    assert_tampered(two_docs, "notes", "a", "malformed")
    tamper(db, "UPDATE documents SET version = 'two' WHERE pool = 'notes' AND key = 'b'")
    assert_tampered(two_docs, "notes", "b", "its version column")
    # Writes replace such rows as if they were new; nothing live was there to delete.
    assert two_docs.delete("notes", "b") is False
    assert two_docs.put("notes", "b", "fresh").version == 1
    assert two_docs.put("notes", "a", "fresh").version == 2


def test_a_tampered_row_is_overwritten_by_the_next_put(two_docs, db):
    tamper(db, "UPDATE documents SET version = 7 WHERE pool = 'notes' AND key = 'a'")
    assert two_docs.put("notes", "a", "new").version == 8
    assert two_docs.get("notes", "a").value == "new"


# --------------------------------------------------------------------------- keys


def test_rotation_keeps_old_documents_readable_and_seals_new_ones_under_the_new_key(
        store, db, identity):
    store.put("notes", "old", "before")
    first = store.keys.key_for("notes")
    second = store.keys.rotate("notes")
    assert (first.version, second.version) == (1, 2) and second.key != first.key
    store.put("notes", "new", "after")
    assert row(db, "notes", "old")[5] == first.key_id
    assert row(db, "notes", "new")[5] == second.key_id
    restarted = fresh_store(db, identity)
    assert restarted.get("notes", "old").value == "before"
    assert restarted.get("notes", "new").value == "after"
    restarted.put("notes", "old", "rewritten")
    assert row(db, "notes", "old")[5] == second.key_id
    assert store.pools()[0].key_versions == 2
    assert store.keys.key_by_id("notes", "9.nothere") is None


def test_install_is_idempotent_and_refuses_another_key_under_a_held_id(store):
    keys = store.keys
    created = keys.create("shared")
    with pytest.raises(MemoryStoreError, match="already has a key"):
        keys.create("shared")
    received = keys.install("shared", "5.fromPeer", 5, bytes(range(32)))
    assert keys.install("shared", "5.fromPeer", 5, bytes(range(32))) == received
    assert keys.key_for("shared") == received
    with pytest.raises(MemoryStoreError, match="another key"):
        keys.install("shared", "5.fromPeer", 5, bytes(32))
    with pytest.raises(ValueError):
        keys.install("shared", "6.short", 6, b"short")
    with pytest.raises(ValueError):
        keys.install("shared", "0.zero", 0, bytes(32))
    assert keys.key_by_id("shared", created.key_id) == created
    assert "key=" not in repr(received)


def test_the_database_file_alone_does_not_reveal_pool_keys(store, db, tmp_path, fleet_ca):
    store.put("notes", "a", {"secret": "alpha"})
    store.keys.rotate("notes")
    store.put("notes", "b", {"secret": "bravo"})
    on_disk = db.path.read_bytes() + Path(f"{db.path}-wal").read_bytes()
    for version in (1, 2):
        (key_id,) = db.conn.execute(
            "SELECT key_id FROM pool_keys WHERE version = ?", (version,)).fetchone()
        key = store.keys.key_by_id("notes", key_id).key
        assert key not in on_disk and b64url_encode(key).encode() not in on_disk
    assert b"alpha" not in on_disk and b"bravo" not in on_disk
    # Another device's box key opens none of them.
    enroll(tmp_path / "thief", fleet_ca, "pi-02", now_ms=NOW, days=10)
    thief = Identity.load(tmp_path / "thief")
    with pytest.raises(MemoryTampered, match=r"keyring.*does not open with this device's box key"):
        fresh_store(db, thief).get("notes", "a")


def test_keyring_entries_swapped_between_pools_are_detected(store, db, identity):
    store.put("notes", "a", 1)
    store.put("other", "a", 2)
    swap(db, "pool_keys", "sealed", "pool = 'notes'", "pool = 'other'")
    with pytest.raises(MemoryTampered, match=r"pool 'notes' keyring.*moved or relabelled"):
        fresh_store(db, identity).put("notes", "b", 3)
    with pytest.raises(MemoryTampered, match=r"pool 'other' keyring.*moved or relabelled"):
        fresh_store(db, identity).get("other", "a")


def test_a_key_planted_by_sealing_to_the_public_box_key_is_refused(store, db, identity):
    """The box key is public (it is in the certificate): anyone can seal to it."""
    store.put("notes", "a", 1)
    planted = bytes(32)
    entry = canonical_json({"pool": "notes", "key_id": "2.planted", "version": 2,
                            "key": b64url_encode(planted)})
    sealed = nacl.public.SealedBox(identity.box_key.public_key).encrypt(entry)
    tamper(db, "INSERT INTO pool_keys VALUES ('notes', '2.planted', 2, ?, 0)", bytes(sealed))
    with pytest.raises(MemoryTampered, match="keyring"):
        fresh_store(db, identity).put("notes", "b", "would be readable by the planter")
    assert fresh_store(db, identity).get("notes", "a").value == 1


# --------------------------------------------------------------------------- durability


_WRITER = """
import sys
from pathlib import Path
from agent.db import Database
from agent.identity import Identity
from agent.memory import MemoryStore, PoolKeys
from agent.wire import HybridClock
root = Path(sys.argv[1])
db = Database.open(root / "igris.db")
store = MemoryStore(db, PoolKeys(db, Identity.load(root).box_key), HybridClock())
n = 0
while True:
    if n % 5 == 4:
        docs = store.put_many("burst", [(f"k{n}.{i}", {"n": n, "i": i}) for i in range(20)])
        sys.stdout.write("".join(d.key + "\\n" for d in docs))
        sys.stdout.flush()
    else:
        store.put("burst", f"k{n}", {"n": n, "pad": "x" * 300})
        print(f"k{n}", flush=True)
    n += 1
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_kill_9_during_a_write_burst_loses_no_acknowledged_write(tmp_path, identity):
    root = tmp_path / "root"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    acknowledged = []
    try:
        while len(acknowledged) < 1000:
            line = child.stdout.readline()
            assert line.endswith("\n"), "the writer stopped"
            acknowledged.append(line[:-1])
        os.kill(child.pid, signal.SIGKILL)
        # Keys printed before the kill are still in the pipe: they were acknowledged too.
        acknowledged += [line[:-1] for line in child.stdout if line.endswith("\n")]
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    db = Database.open(root / "igris.db")
    try:
        assert db.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = fresh_store(db, identity)
        listing = store.query("burst", limit=100_000)
        assert listing.problems == []
        stored = {d.key: d.value for d in listing.documents}
        missing = [key for key in acknowledged if key not in stored]
        assert missing == [], f"{len(missing)} acknowledged writes lost"
        assert all(stored[key]["n"] == int(key[1:].split(".")[0]) for key in acknowledged)
        # The store carries on on that file.
        assert store.put("burst", "after", 1).version == 1
    finally:
        db.close()


def test_values_json_is_what_comes_back(store):
    """Tuples and integer dict keys come back as JSON has them (lists, strings)."""
    doc = store.put("notes", "t", {"pair": (1, 2), "by_id": {3: "three"}})
    assert doc.value == {"pair": [1, 2], "by_id": {"3": "three"}} == store.get("notes", "t").value
    assert json.loads(json.dumps(doc.to_dict()))["value"] == doc.value
