"""The central's database in SQLite (``index.db``): the index, the Merkle log's store and their shared unit
of work, implementing :mod:`edge.central.storage`. The only package of the central that speaks SQL for
the service (``edge verify`` reads the file read-only as well, to catch tampering below the protocols)."""

from edge.central.sqlite.database import SqliteDatabase
from edge.central.sqlite.index import SqliteIndex
from edge.central.sqlite.log import SqliteLogStore

__all__ = ["SqliteDatabase", "SqliteIndex", "SqliteLogStore"]
