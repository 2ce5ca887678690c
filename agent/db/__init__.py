"""The agent's SQLite database (one file, WAL, versioned migrations)."""

from agent.db.database import MIGRATIONS, Database

__all__ = ["MIGRATIONS", "Database"]
