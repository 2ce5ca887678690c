"""The SQLite file: WAL, migrations, session numbers, and a corrupt file refused."""

import sqlite3

import pytest

from agent.db import MIGRATIONS, Database
from agent.errors import DatabaseCorrupt, StorageError


def test_new_database_is_wal_and_migrated(tmp_path):
    db = Database.open(tmp_path / "igris.db")
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.schema_version == MIGRATIONS[-1][0]
    db.close()


def test_session_numbers_count_up_across_reopen(tmp_path):
    db = Database.open(tmp_path / "igris.db")
    assert [db.next_session(), db.next_session()] == [1, 2]
    db.close()
    db = Database.open(tmp_path / "igris.db")
    assert db.next_session() == 3
    db.close()


def test_corrupt_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "igris.db"
    garbage = b"this is not sqlite" * 500
    path.write_bytes(garbage)
    with pytest.raises(DatabaseCorrupt, match="move it aside"):
        Database.open(path)
    assert path.read_bytes() == garbage


def test_database_from_a_newer_agent_is_refused(tmp_path):
    path = tmp_path / "igris.db"
    Database.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="newer than this agent"):
        Database.open(path)
