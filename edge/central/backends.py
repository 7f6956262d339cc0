"""Which database a central's configuration names, opened: the one place that picks the backend.

``[central] index`` chooses it by type: ``sqlite`` (the default: ``<store_dir>/index.db``, one site, the
demo, most tests) or ``postgresql`` (a URL without the password, the password from a secret reference;
several receivers may share it). The receiver (:func:`edge.central.app.build_app`), its commands (init,
enroll, revoke, the console's administration) and `edge verify` open the database through here and see
only the protocols of :mod:`edge.central.storage`.

A database that cannot be opened (unreachable server, refused login, a schema newer than the code)
raises :class:`DatabaseUnavailable`, naming where without the password.
"""

from __future__ import annotations

from edge.central.config import CentralConfig, ConfigError, PostgresIndexConfig, SqliteIndexConfig
from edge.central.index import CentralIndexError
from edge.central.sqlite import SqliteDatabase
from edge.central.storage import CentralDatabase, Index, Readers

__all__ = [
    "DatabaseNotSetUp",
    "DatabaseUnavailable",
    "database_exists",
    "database_where",
    "open_central_database",
    "open_central_index",
    "signed_head_summary",
]


class DatabaseUnavailable(CentralIndexError):
    """The configured database cannot be opened now (or is newer than this code)."""


class DatabaseNotSetUp(DatabaseUnavailable, ConfigError):
    """The database needs an operator (its schema is behind and the runtime role may not migrate it, or the
    roles are set up wrong): a ConfigError, so `edge central run` exits with the configuration's status
    rather than 75 (a restart cannot fix it)."""


def database_where(config: CentralConfig) -> str:
    """Where the index is, for messages: the SQLite file, or the PostgreSQL URL (it carries no password:
    :class:`~edge.central.config.PostgresIndexConfig` refuses one)."""
    index = config.central.index
    if isinstance(index, PostgresIndexConfig):
        return index.url
    return str(config.layout.index_db)


def database_exists(config: CentralConfig) -> bool:
    """Whether there may be records to read: the SQLite file exists, or a PostgreSQL database is
    configured (its schema is made when it is first opened)."""
    if isinstance(config.central.index, PostgresIndexConfig):
        return True
    return config.layout.index_db.is_file()


def _read_time_limits_s(index: SqliteIndexConfig | PostgresIndexConfig) -> dict[Readers, float]:
    return {Readers.STATIONS: index.station_statement_timeout_s,
            Readers.CONSOLE: index.console_statement_timeout_s}


def open_central_database(config: CentralConfig) -> CentralDatabase:
    """The configured database with its schema brought to this code's version."""
    index = config.central.index
    if not isinstance(index, PostgresIndexConfig):
        return SqliteDatabase.open(config.layout.index_db, read_time_limits_s=_read_time_limits_s(index))
    # Imported here: psycopg is needed only by a central configured for PostgreSQL.
    import psycopg

    from edge.central.postgres import PostgresDatabase, RuntimeRoleError, SchemaBehind, SchemaError

    try:
        password = index.password.resolve() if index.password is not None else None
    except ConfigError as exc:
        raise DatabaseUnavailable(f"central.index.password: {exc}") from None
    try:
        owner_password = index.owner_password.resolve() if index.owner_password is not None else None
    except ConfigError as exc:
        raise DatabaseUnavailable(f"central.index.owner_password: {exc}") from None
    try:
        return PostgresDatabase.open(index.url, password=password, console_key=config.layout.console_key,
                                     application_name=f"edge-central {config.central.id}",
                                     owner_url=index.owner_url, owner_password=owner_password,
                                     statement_timeouts_s=_read_time_limits_s(index))
    except (SchemaBehind, RuntimeRoleError) as exc:
        raise DatabaseNotSetUp(f"the index database {index.url} cannot be used: {exc}") from None
    except (psycopg.Error, SchemaError) as exc:
        # libpq's messages name host, port, user and database, never the password.
        raise DatabaseUnavailable(f"the index database {index.url} cannot be used: "
                                  f"{str(exc).strip()}") from None


def open_central_index(config: CentralConfig) -> Index:
    """The configured database's index; closing it closes the database."""
    return open_central_database(config).index


def signed_head_summary(config: CentralConfig) -> tuple[int, str | None, str | None]:
    """How many tree heads the central's Merkle log holds, with the key id and time of the newest; zeros
    for a store that has no index yet. Raises :class:`DatabaseUnavailable` or the backend's errors."""
    if not isinstance(config.central.index, PostgresIndexConfig):
        from edge.central.sqlite.log import signed_head_summary as sqlite_summary

        if not config.layout.index_db.is_file():
            return 0, None, None
        return sqlite_summary(config.layout.index_db)
    import psycopg

    database = open_central_database(config)
    count = 0
    newest: tuple[object, ...] | None = None
    try:
        for head in database.log_store.heads():
            count += 1
            newest = head
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"the Merkle log in {database_where(config)} cannot be read: "
                                  f"{exc}") from None
    finally:
        database.close()
    if newest is None:
        return 0, None, None
    # (id, origin, tree_size, root_hash, time, key_id, signature)
    return count, str(newest[5]), str(newest[4])
