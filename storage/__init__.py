"""Database plumbing shared by the server and the ENC (neither imports the other).

``sqlite_engine(url)`` opens a SQLite database the way both need it: durable commits
(WAL, ``synchronous=FULL``), foreign keys on, and a busy timeout instead of "database is
locked" between readers and the writer.
"""

from ._sqlite import SQLITE_PRAGMAS, sqlite_engine

__all__ = ["SQLITE_PRAGMAS", "sqlite_engine"]
