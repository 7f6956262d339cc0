"""`edge central migrate`: a site's embedded store (SQLite and a local folder) moved into PostgreSQL and S3.

The source is the configuration the central ran with; the target a copy of it whose ``[central] index``
and ``objects`` name the PostgreSQL database and the S3 bucket (same central id, same store directory:
the identity, keys and console key stay where they are). In order, each step stopping the run when it
fails and nothing being reported done that was not:

1. the source store's lock is taken (a central running on it refuses the migration, and no central
   starts on it while the migration runs);
2. the target database gets this release's schema, and every table of both schemas must be known
   (:mod:`edge.central.migration.tables`); a target database that already holds rows must hold exactly
   the source's (an earlier run that got that far), or the migration is refused;
3. every object is copied and locked (:mod:`edge.central.migration.objects`), resuming past those an
   earlier run copied; a source object whose bytes are not its row's is named, and the index is not
   copied;
4. every row is copied in one transaction, as the receivers' role; the role that owns the tables
   (``[central] index`` ``owner_url``; the same role in a single-role install) then moves the identity
   sequences past the copied ids; the copy is compared row by row with the source;
5. `edge verify` runs on the target (the same checks: objects hashed, the Merkle log recomputed, every
   receipt reproduced, the trails' seals) and the summary says rows per table, objects, bytes, time
   and the verdict.

A run interrupted anywhere can be run again: objects already in the bucket are skipped, an uncommitted
index copy left nothing behind, a committed one is recognised by the comparison.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from edge.central.backends import open_central_database
from edge.central.config import CentralConfig, PostgresIndexConfig, S3ObjectsConfig
from edge.central.identity import lock_central_store
from edge.central.migration.objects import (
    ObjectOutcome,
    ObjectRefused,
    copy_object,
    objects_to_copy,
    unreferenced_objects,
)
from edge.central.migration.tables import (
    NOT_COPIED,
    CopyRefused,
    TableCopy,
    compare_table,
    continue_identities,
    copy_tables,
    plan_tables,
    target_row_counts,
)
from edge.central.object_stores import open_object_store
from edge.central.objects import FileObjectStore
from edge.central.postgres import PostgresDatabase
from edge.central.postgres.database import connect_owner
from edge.central.postgres.migrations import owns_schema
from edge.central.retention import RetentionPolicy
from edge.central.s3_objects import S3ObjectStore
from edge.central.verify import verify_central
from edge.runtime.logs import event_fields

__all__ = ["MigrationConfigError", "MigrationFailed", "MigrationSummary", "migrate_central"]

log = logging.getLogger(__name__)

# How often a long step says how far it is.
_PROGRESS_EVERY_S = 5.0
# Refused objects listed one by one; past this many, counted.
_MAX_NAMED = 50


class MigrationConfigError(Exception):
    """The two configurations do not describe an embedded store and its PostgreSQL and S3 copy."""


class MigrationFailed(Exception):
    """The migration stopped; ``summary`` says how far it got."""

    def __init__(self, message: str, summary: MigrationSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class MigrationSummary:
    rows: dict[str, int] = field(default_factory=dict)
    not_copied: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    index: str = "not copied"
    objects: dict[str, int] = field(default_factory=dict)
    bytes_copied: int = 0
    bytes_total: int = 0
    unreferenced_objects: int = 0
    refused: list[str] = field(default_factory=list)
    refused_count: int = 0
    differences: list[str] = field(default_factory=list)
    verify_problems: list[str] = field(default_factory=list)
    verify_checked: dict[str, int] = field(default_factory=dict)
    verdict: str = "not run"
    elapsed_s: float = 0.0

    def lines(self) -> list[str]:
        """The summary for the terminal."""
        out = [f"index: {self.index}"]
        out += [f"  {table}: {count} rows" for table, count in self.rows.items()]
        out += [f"  {table}: {count} rows not copied: {reason}"
                for table, (count, reason) in self.not_copied.items()]
        kinds = ", ".join(f"{count} {kind}" for kind, count in self.objects.items()) or "none"
        out.append(f"objects: {sum(self.objects.values())} ({kinds}); {_size(self.bytes_copied)} sent of "
                   f"{_size(self.bytes_total)}")
        if self.unreferenced_objects:
            out.append(f"  not copied: {self.unreferenced_objects} object(s) in the source's objects/ that "
                       "no item names (`edge verify` of the source names them)")
        out += [f"refused: {line}" for line in self.refused]
        if self.refused_count > len(self.refused):
            out.append(f"refused: {self.refused_count - len(self.refused)} more object(s)")
        out += [f"differs: {line}" for line in self.differences]
        out += [f"verify: {line}" for line in self.verify_problems]
        out.append(f"verify on the target: {self.verdict}")
        out.append(f"elapsed: {self.elapsed_s:.1f} s")
        return out


def _size(count: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


class _Progress:
    """Says how far a long step is, at most every few seconds."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._last = time.monotonic()

    def __call__(self, text: str, *, now: bool = False) -> None:
        moment = time.monotonic()
        if now or moment - self._last >= _PROGRESS_EVERY_S:
            self._last = moment
            self._say(text)


def _check_configs(source: CentralConfig,
                   target: CentralConfig) -> tuple[PostgresIndexConfig, S3ObjectsConfig]:
    problems: list[str] = []
    if source.central.index.type != "sqlite" or source.central.objects.type != "files":
        problems.append("--config must be the embedded store's configuration ([central] index sqlite and "
                        "objects files, the defaults)")
    index, objects = target.central.index, target.central.objects
    if not isinstance(index, PostgresIndexConfig):
        problems.append("--to must name a PostgreSQL index ([central] index = {type = \"postgresql\", ...})")
    if not isinstance(objects, S3ObjectsConfig):
        problems.append("--to must name an S3 bucket ([central] objects = {type = \"s3\", ...})")
    if source.central.id != target.central.id:
        problems.append(f"the central id differs ({source.central.id} and {target.central.id}): it is the "
                        "origin of every signed tree head and must stay")
    if source.central.store_dir != target.central.store_dir:
        problems.append(f"the store_dir differs ({source.central.store_dir} and {target.central.store_dir}): "
                        "the identity, signing key and console key stay in the store; give both the same")
    if problems:
        raise MigrationConfigError("; ".join(problems))
    assert isinstance(index, PostgresIndexConfig) and isinstance(objects, S3ObjectsConfig)
    return index, objects


def _check_owner_reachable(database: PostgresDatabase, index: PostgresIndexConfig) -> None:
    """Refuse, before anything is copied, a target whose only role is a least-privilege runtime role: the
    copy's last step (the identity sequences) is the owner's."""
    if index.owner_url is not None or owns_schema(database.conn) is not False:
        return  # the owner's URL is given, or the URL's role owns the tables (a single-role install)
    raise MigrationConfigError(
        f"--to gives only the receivers' role {database.conn.info.user}, which does not own the central's "
        f"tables in {database.where}: the migration also moves the tables' id sequences past the copied "
        "rows, which only the owner may (the receivers never get UPDATE on a sequence). Add the owner's "
        "URL as central.index.owner_url, with owner_password, to the --to configuration")


def _continue_sequences(database: PostgresDatabase, index: PostgresIndexConfig,
                        plans: list[TableCopy]) -> None:
    """Move the identity sequences past the copied ids, as the role that owns the tables."""
    if index.owner_url is None:  # a single-role install: the URL's role owns them
        continue_identities(database.conn, plans)
        return
    password = index.owner_password.resolve() if index.owner_password is not None else None
    # A short connection: the owner's step only, like the schema migrations.
    with connect_owner(index.owner_url, password, "edge central migrate") as owner:
        continue_identities(owner, plans)


def migrate_central(source: CentralConfig, target: CentralConfig,
                    say: Callable[[str], None]) -> MigrationSummary:
    """Move the embedded store of ``source`` into the PostgreSQL database and S3 bucket of ``target``;
    ``say`` gets progress lines. Returns the summary of a migration that verified; raises
    :class:`MigrationConfigError`, :class:`edge.durable.lock.StoreBusy` (a central runs on the source),
    :class:`edge.central.backends.DatabaseUnavailable`, :class:`edge.central.objects.ObjectStoreError`
    or :class:`MigrationFailed`."""
    index_config, _ = _check_configs(source, target)
    started = time.monotonic()
    summary = MigrationSummary()
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock_central_store(source, purpose="edge central migrate"))
        index_db = source.layout.index_db
        if not index_db.is_file():
            raise MigrationConfigError(f"{index_db} does not exist: there is no embedded index to migrate")
        conn = sqlite3.connect(f"file:{index_db}?mode=ro", uri=True, timeout=30)
        stack.callback(conn.close)
        conn.execute("BEGIN")  # one snapshot throughout (the lock keeps writers out anyway)
        database = open_central_database(target)
        stack.callback(database.close)
        assert isinstance(database, PostgresDatabase)
        _check_owner_reachable(database, index_config)
        bucket = open_object_store(target)
        assert isinstance(bucket, S3ObjectStore)
        try:
            try:
                _migrate(conn, database, bucket, source, target, summary, _Progress(say))
            except psycopg.Error as exc:
                # A lost connection or a server error between the steps: libpq names no password.
                raise MigrationFailed(f"the target database {database.where} failed: {str(exc).strip()}; run "
                                      "the migration again (it resumes)", summary) from None
            except sqlite3.Error as exc:
                raise MigrationFailed(f"the source index {index_db} cannot be read: {exc}", summary) from None
        except MigrationFailed:
            summary.elapsed_s = time.monotonic() - started
            log.error("migration of %s to %s failed", source.central.store_dir, index_config.url,
                      extra=event_fields(event="central_migration_failed"))
            raise
        summary.elapsed_s = time.monotonic() - started
    log.info("central store %s migrated to %s and bucket %s", source.central.store_dir, index_config.url,
             bucket.bucket, extra=event_fields(event="central_migrated"))
    return summary


def _migrate(conn: sqlite3.Connection, database: PostgresDatabase, bucket: S3ObjectStore,
             source: CentralConfig, target: CentralConfig, summary: MigrationSummary,
             progress: _Progress) -> None:
    index_config = target.central.index
    assert isinstance(index_config, PostgresIndexConfig)
    target_conn = database.conn
    try:
        plans = plan_tables(conn, target_conn)
    except CopyRefused as exc:
        raise MigrationFailed(str(exc), summary) from None
    already = sum(target_row_counts(target_conn, plans).values()) > 0
    if already:
        progress("the target database holds rows: comparing them with the source (an earlier run's copy?)",
                 now=True)
        differences = _compare(conn, target_conn, plans, progress)
        if differences:
            summary.differences = differences
            raise MigrationFailed(
                f"the target database {database.where} is not empty and does not hold this store's index "
                f"({differences[0]}): nothing was copied. Migrate into an empty database", summary)
    _copy_objects(conn, FileObjectStore(source.layout.objects_dir), bucket,
                  RetentionPolicy.from_config(target.retention), summary, progress)
    # The connection sat idle while the objects went (hours, for an agency): the property connects again
    # when the server or a firewall dropped it.
    target_conn = database.conn
    if summary.refused_count:
        raise MigrationFailed(f"{summary.refused_count} object(s) refused: the index was not copied; restore "
                              "the named objects (or find why they changed) and run the migration again",
                              summary)
    if already:
        summary.index = "already copied by an earlier run (compared row by row)"
        summary.rows = {plan.name: _source_count(conn, plan) for plan in plans}
        # An earlier run may have stopped between its committed copy and this step.
        _continue_sequences(database, index_config, plans)
    else:
        progress("copying the index in one transaction", now=True)
        try:
            summary.rows = copy_tables(conn, target_conn, plans,
                                       lambda table, rows: progress(f"index: {table}: {rows} rows"))
        except CopyRefused as exc:
            raise MigrationFailed(str(exc), summary) from None
        summary.index = f"copied into {database.where}"
        _continue_sequences(database, index_config, plans)
        progress("comparing the copy with the source, row by row", now=True)
        summary.differences = _compare(conn, target_conn, plans, progress)
        if summary.differences:
            raise MigrationFailed("the copied index differs from the source", summary)
    progress("running `edge verify` on the target", now=True)
    findings = verify_central(target.central.store_dir, index=index_config, objects=bucket)
    summary.verify_checked = dict(findings.checked)
    summary.verify_problems = [f"{problem.where}: {problem.what}" for problem in findings.problems]
    summary.not_copied = {table: (_count(conn, table), reason) for table, reason in NOT_COPIED.items()
                          if _count(conn, table) is not None}
    summary.verdict = "OK" if not findings.problems else f"{len(findings.problems)} problem(s)"
    if findings.problems:
        raise MigrationFailed("`edge verify` finds problems on the target", summary)


def _count(conn: sqlite3.Connection, table: str) -> int | None:
    """The rows of a source table (None: the source has no such table)."""
    found = conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if found is None:
        return None
    row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    return int(row[0]) if row is not None else 0


def _source_count(conn: sqlite3.Connection, plan: TableCopy) -> int:
    return _count(conn, plan.name) or 0


def _compare(conn: sqlite3.Connection, target_conn: psycopg.Connection[Any], plans: list[TableCopy],
             progress: _Progress) -> list[str]:
    differences: list[str] = []
    for plan in plans:
        progress(f"comparing {plan.name}")
        difference = compare_table(conn, target_conn, plan)
        if difference is not None:
            differences.append(f"table {plan.name}: {difference}")
    return differences


def _copy_objects(conn: sqlite3.Connection, local: FileObjectStore, bucket: S3ObjectStore,
                  policy: RetentionPolicy, summary: MigrationSummary, progress: _Progress) -> None:
    total_row = conn.execute("SELECT count(DISTINCT sha256), coalesce(sum(size), 0) FROM "
                             "(SELECT sha256, max(size) AS size FROM items GROUP BY sha256)").fetchone()
    count, summary.bytes_total = (int(total_row[0]), int(total_row[1])) if total_row else (0, 0)
    progress(f"objects: {count} to copy into bucket {bucket.bucket} ({_size(summary.bytes_total)})", now=True)
    done = 0
    done_bytes = 0
    moment = time.monotonic()
    try:
        for wanted in objects_to_copy(conn, policy):
            try:
                outcome = copy_object(local, bucket, wanted)
            except ObjectRefused as exc:
                log.error("%s", exc,
                          extra=event_fields(event="migration_object_refused", item=wanted.items[0]))
                if len(summary.refused) < _MAX_NAMED:
                    summary.refused.append(str(exc))
                summary.refused_count += 1
                continue
            finally:
                done += 1
                done_bytes += wanted.size_bytes
            summary.objects[outcome.value] = summary.objects.get(outcome.value, 0) + 1
            if outcome is ObjectOutcome.COPIED:
                summary.bytes_copied += wanted.size_bytes
            elapsed = max(time.monotonic() - moment, 1e-3)
            progress(f"objects: {done}/{count}, {_size(done_bytes)} of {_size(summary.bytes_total)} "
                     f"({summary.bytes_copied / elapsed / (1 << 20):.1f} MB/s sent)")
    except ObjectRefused as exc:  # the index itself disagrees (one content, two sizes)
        summary.refused.append(str(exc))
        summary.refused_count += 1
    progress(f"objects: {done}/{count} done", now=True)
    summary.unreferenced_objects = unreferenced_objects(conn, local)
