"""The agent's one SQLite file: WAL, versioned schema, clear errors when it is bad.

Components get the :class:`Database` from the runtime and add their tables
through :data:`MIGRATIONS` (append only: a released migration never changes),
so every device can be upgraded from any earlier version in place.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.errors import DatabaseCorrupt, StorageError

log = logging.getLogger(__name__)

# (version, SQL). Append new versions; never edit a released one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        """
        -- Membership: one row per peer this device follows (agent/mesh).
        CREATE TABLE peers (
            device_id    TEXT PRIMARY KEY,
            state        TEXT NOT NULL,              -- alive | suspect | dead | left
            session      INTEGER NOT NULL,
            role         TEXT NOT NULL DEFAULT 'device',
            groups_json  TEXT NOT NULL DEFAULT '[]',
            caps_json    TEXT NOT NULL DEFAULT '[]',
            info_json    TEXT NOT NULL DEFAULT '{}', -- target, version, health
            cert_json    TEXT,
            last_seen_ms INTEGER NOT NULL,
            changed_ms   INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        3,
        """
        -- The signed, hash-chained, append-only ledger (agent/security_mesh/ledger.py).
        CREATE TABLE ledger (
            seq        INTEGER PRIMARY KEY,
            prev       BLOB NOT NULL,
            hash       BLOB NOT NULL,
            ts_ms      INTEGER NOT NULL,
            ts_counter INTEGER NOT NULL,
            kind       TEXT NOT NULL,
            body       TEXT NOT NULL,
            author     TEXT NOT NULL,
            sig        BLOB NOT NULL
        );
        -- The newest ledger checkpoint seen from each peer, and any flag raised.
        CREATE TABLE peer_checkpoints (
            device_id  TEXT PRIMARY KEY,
            size       INTEGER NOT NULL,
            head       BLOB NOT NULL,
            seen_ms    INTEGER NOT NULL,
            flag       TEXT
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        """
        -- The fleet blocklist (agent/security_mesh/blocklist.py): newest entry per target.
        CREATE TABLE blocklist (
            target      TEXT PRIMARY KEY,            -- device:<id> | key:<key id>
            blocked     INTEGER NOT NULL,
            reason      TEXT NOT NULL DEFAULT '',
            expires_ms  INTEGER,
            ts_ms       INTEGER NOT NULL,
            ts_counter  INTEGER NOT NULL,
            author      TEXT NOT NULL,
            envelope    TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        5,
        """
        -- Policies applied, newest in force (agent/mesh/policy.py).
        CREATE TABLE policy (
            version     INTEGER PRIMARY KEY,
            document    TEXT NOT NULL,
            author      TEXT NOT NULL,
            envelope    TEXT NOT NULL,
            applied_ms  INTEGER NOT NULL
        );
        """,
    ),
    (
        6,
        """
        -- Commands executed, by request id (agent/bus/server.py): a redelivered
        -- request gets the stored reply and is not run twice. Pruned after a day.
        CREATE TABLE command_log (
            id        TEXT PRIMARY KEY,
            src       TEXT NOT NULL,
            command   TEXT NOT NULL,
            ok        INTEGER NOT NULL,
            reply     TEXT NOT NULL,
            done_ms   INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX command_log_done ON command_log (done_ms);
        """,
    ),
    (
        7,
        """
        -- AI backend figures measured on this device (agent/ai/bench.py, `igris bench`):
        -- the newest per backend and model, which the router weighs backends by.
        CREATE TABLE ai_bench (
            backend          TEXT NOT NULL,
            model            TEXT NOT NULL,
            p50_ms           REAL NOT NULL,
            p95_ms           REAL NOT NULL,
            accuracy         REAL NOT NULL,
            mj_per_inference REAL NOT NULL,
            samples          INTEGER NOT NULL,
            measured_ms      INTEGER NOT NULL,
            PRIMARY KEY (backend, model)
        ) WITHOUT ROWID;
        """,
    ),
    (
        8,
        """
        -- Memory pools on this device (agent/memory/store.py), made by their first put.
        CREATE TABLE pools (
            pool          TEXT PRIMARY KEY,
            default_ttl_s INTEGER,                     -- NULL: no expiry unless put with one
            created_ms    INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- Every version of each pool's SecretBox key (agent/memory/keys.py), sealed to
        -- this device's box key. The newest version seals new writes.
        CREATE TABLE pool_keys (
            pool       TEXT NOT NULL,
            key_id     TEXT NOT NULL,
            version    INTEGER NOT NULL,
            sealed     BLOB NOT NULL,
            created_ms INTEGER NOT NULL,
            PRIMARY KEY (pool, key_id)
        ) WITHOUT ROWID;
        -- Encrypted JSON documents, one row per (pool, key), deleted = 1 for a tombstone.
        -- The columns repeat what the sealed blob holds, so rows can be filtered without
        -- opening them, and a row whose columns disagree with its blob is tampered.
        CREATE TABLE documents (
            pool       TEXT NOT NULL,
            key        TEXT NOT NULL,
            version    INTEGER NOT NULL,
            ts_ms      INTEGER NOT NULL,
            ts_counter INTEGER NOT NULL,
            expires_ms INTEGER,
            deleted    INTEGER NOT NULL,
            key_id     TEXT NOT NULL,
            blob       BLOB NOT NULL,
            PRIMARY KEY (pool, key)
        );
        CREATE INDEX documents_expiry ON documents (expires_ms) WHERE expires_ms IS NOT NULL;
        """,
    ),
    (
        9,
        """
        -- Who shares each memory pool (agent/memory/sharing.py): the member list of the
        -- newest key message accepted for it, and which key and signed message that was.
        CREATE TABLE pool_members (
            pool       TEXT PRIMARY KEY,
            members    TEXT NOT NULL,                  -- JSON list of device ids, sorted
            key_id     TEXT NOT NULL,
            version    INTEGER NOT NULL,
            ts_ms      INTEGER NOT NULL,
            ts_counter INTEGER NOT NULL,
            author     TEXT NOT NULL,
            updated_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        10,
        """
        -- Delta sync (agent/memory/sync.py): every write of a document row, local or
        -- merged, is an INSERT OR REPLACE, which gives the row the rowid seq one above
        -- the highest in the table. The sweep never deletes the row holding the highest,
        -- so seqs only grow (without AUTOINCREMENT's extra write per insert), and a peer
        -- asks for the rows "since seq W" instead of comparing the whole pool. source
        -- names the peer a merged row came from (NULL: written here), so it is not sent
        -- back to it.
        CREATE TABLE documents_v10 (
            seq        INTEGER PRIMARY KEY,
            pool       TEXT NOT NULL,
            key        TEXT NOT NULL,
            version    INTEGER NOT NULL,
            ts_ms      INTEGER NOT NULL,
            ts_counter INTEGER NOT NULL,
            expires_ms INTEGER,
            deleted    INTEGER NOT NULL,
            key_id     TEXT NOT NULL,
            blob       BLOB NOT NULL,
            source     TEXT,
            UNIQUE (pool, key)
        );
        INSERT INTO documents_v10 (pool, key, version, ts_ms, ts_counter, expires_ms,
                                   deleted, key_id, blob)
            SELECT pool, key, version, ts_ms, ts_counter, expires_ms, deleted, key_id, blob
            FROM documents ORDER BY rowid;
        DROP TABLE documents;
        ALTER TABLE documents_v10 RENAME TO documents;
        CREATE INDEX documents_expiry ON documents (expires_ms) WHERE expires_ms IS NOT NULL;
        -- How far this device has pulled each peer's rows of each pool: the peer's seq
        -- and the epoch (random id) of the peer's database it counts in.
        CREATE TABLE mem_watermarks (
            pool       TEXT NOT NULL,
            peer       TEXT NOT NULL,
            epoch      TEXT NOT NULL,
            seq        INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (pool, peer)
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO meta (key, value) VALUES ('mem_epoch', lower(hex(randomblob(8))));
        """,
    ),
    (
        11,
        """
        -- The durable task queue (agent/orchestrator/queue.py). A plan's id numbers its
        -- tasks: task ids are "<plan>/<task id>".
        -- Plans are never deleted, so a plain rowid never hands an id out twice.
        CREATE TABLE task_plans (
            id           INTEGER PRIMARY KEY,
            goal         TEXT NOT NULL,
            submitted_ms INTEGER NOT NULL
        );
        -- One row per task. seq orders tasks by age, spec is the canonical JSON task spec,
        -- waiting counts the dependencies not yet done, not_before_ms is when a failed
        -- task's backoff ends, error says why it last failed, went dead or was cancelled.
        CREATE TABLE tasks (
            seq              INTEGER PRIMARY KEY,
            id               TEXT NOT NULL UNIQUE,
            plan             INTEGER NOT NULL REFERENCES task_plans (id),
            kind             TEXT NOT NULL,
            spec             TEXT NOT NULL,
            state            TEXT NOT NULL,
            priority         INTEGER NOT NULL,
            retries          INTEGER NOT NULL,
            waiting          INTEGER NOT NULL,
            attempts         INTEGER NOT NULL,
            submitted_ms     INTEGER NOT NULL,
            updated_ms       INTEGER NOT NULL,
            not_before_ms    INTEGER NOT NULL,
            deadline_ms      INTEGER,
            lease_owner      TEXT,
            lease_expires_ms INTEGER,
            result           TEXT,
            error            TEXT,
            placement        TEXT
        );
        -- By state, and within ready tasks the next to lease: highest priority, then
        -- oldest. One index for both, so a state change rewrites one index page, not two.
        CREATE INDEX tasks_state ON tasks (state, priority DESC, seq);
        CREATE INDEX tasks_deadline ON tasks (deadline_ms)
            WHERE deadline_ms IS NOT NULL AND state IN ('pending', 'ready', 'failed');
        -- The DAG: task (a seq) waits for dep (a seq) to be done.
        CREATE TABLE task_deps (
            dep  INTEGER NOT NULL,
            task INTEGER NOT NULL,
            PRIMARY KEY (dep, task)
        ) WITHOUT ROWID;
        """,
    ),
)


class Database:
    """One SQLite connection in WAL mode, opened and migrated by :meth:`open`.

    >>> db = Database.open(Path("/tmp/igris.db"))   # doctest: +SKIP
    >>> db.next_session()                           # doctest: +SKIP
    1
    """

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: Path) -> Database:
        """Open (creating if absent), check and migrate the database at ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {str(path)!r}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise DatabaseCorrupt(
                f"{str(path)!r} is not a usable SQLite database ({exc}). The agent will "
                "not touch it: move it aside (keep it for recovery) and start again to "
                "create a new one."
            ) from None
        db = cls(path, conn)
        db._migrate()
        return db

    @property
    def schema_version(self) -> int:
        row = self.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        conn = self.conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)"
        )
        current = self.schema_version
        newest = MIGRATIONS[-1][0]
        if current > newest:
            raise StorageError(
                f"{str(self.path)!r} has schema version {current}, newer than this agent "
                f"knows ({newest}); upgrade the agent or restore a matching database"
            )
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            log.info("migrating %s to schema version %d", self.path, version)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version VALUES (?, CAST(strftime('%s','now') AS INTEGER)"
                    " * 1000)",
                    (version,),
                )
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` on error); nests as a no-op.

        Components that must change several tables together (a policy and its
        ledger entry) open one transaction around both; each component's own
        writes use this too, so they join the outer one when there is one.
        """
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def next_session(self) -> int:
        """Count up and return this run's session number (survives restarts).

        Written with ``synchronous=FULL`` semantics (a checkpointed commit),
        because a session number handed out twice would let a stale death
        kill a live device.
        """
        conn = self.conn
        conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            session = int(self.get_meta("session") or 0) + 1
            self.set_meta("session", str(session))
            conn.execute("COMMIT")
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        return session

    def close(self) -> None:
        self.conn.close()
