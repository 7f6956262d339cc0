"""The station's evidence store: one directory holding everything the station knows.

    store_dir/
      store.lock            held (flock) by the one process writing the store; names it (pid, command)
      keys/station.key      Ed25519 private key (0600), made on first run (never over a non-empty ledger)
      keys/station.key.pub  its public half
      keys/station.key.<keyid>.retired[.pub]   keys rotated out by `edge keys rotate`, kept for good
      state.db              SQLite (WAL): ledger, checkpoints, items, acquisitions, sessions, uploads,
                            and what the central witnessed (witnessed heads, its checked tree heads);
                            each verified copy's SHA-256 prefix digests for the upload (a cache:
                            edge.ingest.prefix_digests)
      ledger.reserve        space held back so that a full disk can still be put on the record
      tmp/                  copies in progress (discarded or resumed after a crash)
      items/YYYY/MM/DD/<item>.<ext>                 sealed evidence (original + manifest box, or original)
      items/YYYY/MM/DD/<item>.<ext>.manifest.json   signed manifest sidecar
      items/YYYY/MM/DD/<item>.<ext>.receipt.json    the central's verified receipt (once uploaded), with
                                                    its witnessed head of this station's ledger

Stored names are the item UUID and a vetted extension: names from devices are never used as paths.
State changes and their ledger entries are written in one SQLite transaction, so neither exists
without the other after a crash.

One process at a time writes a store: opening it takes the store lock (`edge.durable.lock`) before
anything else is touched, and a second writer is refused with `StoreBusy` naming the holder. Readers
(`edge verify`) open state.db read-only and take no lock, so they work beside a running agent.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.custody.errors import LedgerError
from edge.custody.ledger import Ledger, LedgerEntry
from edge.custody.text import scrub_error_text
from edge.custody.witness_log import StationWitness
from edge.durable.files import (
    adopt_owner,
    create_private_file,
    ensure_private_dir,
    ensure_private_file,
    write_atomic,
)
from edge.durable.lock import LOCK_FILE_NAME, StoreBusy, StoreLock
from edge.durable.sqlite import immediate_transaction
from edge.ingest.events import LedgerEventLog
from edge.ingest.station_key import StationKeyProblem, open_station_key

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS station (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    device_serial TEXT NOT NULL,
    usb_serial TEXT,
    bay INTEGER,
    started TEXT NOT NULL,
    ended TEXT,
    outcome TEXT,
    identity TEXT NOT NULL,           -- canonical JSON of the recorder identity and clock facts
    started_seq INTEGER               -- seq of its session_started entry: the order dockings were recorded
                                      -- in (never the rowid, which VACUUM or a copy renumbers)
);
CREATE TABLE IF NOT EXISTS acquisitions (   -- one row per original a source offered (edge.ingest)
    source TEXT NOT NULL,             -- usb, gb28181, room, local
    device TEXT NOT NULL,             -- recorder serial, platform device, room
    original TEXT NOT NULL,           -- its name at the source (usb: path on the volume, hex if not UTF-8)
    version TEXT NOT NULL,            -- tells apart originals of the same name (usb: "size:mtime_ns";
                                      -- "#2", "#3"... appended: a later original under a gone key)
    item TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,              -- pending, copied, verified, sealed, failed, superseded; then the
                                      -- source's own (usb: wiping, wiped)
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (source, device, original, version)
);
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    path TEXT,                        -- relative to store_dir, set once sealed
    sealed_in_file INTEGER NOT NULL DEFAULT 0,
    device_serial TEXT NOT NULL,
    officer_no TEXT,
    acquired TEXT NOT NULL,
    manifest TEXT                     -- canonical JSON of the signed manifest
);
CREATE INDEX IF NOT EXISTS items_sha256 ON items(sha256);
-- A source's rows in one state (gb28181: those a crash left in progress, looked up at every download pass)
CREATE INDEX IF NOT EXISTS acquisitions_state ON acquisitions(source, device, state);
CREATE TABLE IF NOT EXISTS uploads (      -- the spool: one row per sealed item bound for the central
    item TEXT PRIMARY KEY REFERENCES items(item),
    state TEXT NOT NULL,              -- queued, uploaded, receipted, rejected
    upload_url TEXT,                  -- the tus upload, kept so a restart resumes it
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,   -- unix time before which it is not retried
    last_error TEXT,
    receipt TEXT,                     -- canonical JSON of the verified receipt
    receipted TEXT,                   -- station UTC time the receipt verified
    purged TEXT,                      -- station UTC time the local copy was purged
    held_seq INTEGER                  -- seq of the `error` entry (stage `stored copy`) that found its stored
                                      -- copy changed: not sent until re-acquired or released (NULL: not held)
);
CREATE INDEX IF NOT EXISTS uploads_state ON uploads(state, next_attempt);
CREATE TABLE IF NOT EXISTS prefix_digests (  -- the upload's cache, not evidence: edge.ingest.prefix_digests
    item TEXT PRIMARY KEY,
    step_bytes INTEGER NOT NULL,      -- a digest at every multiple of it, and at the end
    size INTEGER NOT NULL,            -- of the original (the first `size` bytes of the stored copy)
    digests BLOB NOT NULL             -- 32-byte SHA-256 digests of bytes 0..each boundary, concatenated
);
"""

RESERVE_BYTES = 128 * 1024
SAFE_EXTENSION = re.compile(r"^[a-z0-9]{1,8}$")


def stored_extension(original_name: str) -> str:
    """The extension a stored object keeps: lower-case alphanumerics only, else none."""
    _, dot, ext = original_name.rpartition(".")
    ext = ext.lower()
    return ext if dot and SAFE_EXTENSION.match(ext) else "bin"


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def private_key(self) -> Path:
        return self.keys_dir / "station.key"

    @property
    def public_key(self) -> Path:
        return self.keys_dir / "station.key.pub"  # written beside the private key on creation

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def wal(self) -> Path:
        return self.root / "state.db-wal"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def reserve(self) -> Path:
        return self.root / "ledger.reserve"

    @property
    def items(self) -> Path:
        return self.root / "items"

    def tmp_copy(self, item: str) -> Path:
        return self.tmp / f"{item}.part"

    def item_relpath(self, item: str, acquired: str, ext: str) -> Path:
        day = acquired[:10].split("-")  # acquired is ISO UTC: YYYY-MM-DD...
        return Path("items", *day, f"{item}.{ext}")

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".manifest.json")


def read_station_id(conn: sqlite3.Connection) -> str | None:
    """The station a store belongs to, as its database records it (None for an empty database)."""
    row = conn.execute("SELECT value FROM station WHERE key='id'").fetchone()
    return None if row is None else str(row[0])


def open_db(path: Path) -> sqlite3.Connection:
    # SQLite gives the -wal and -shm files the database file's mode: create it private first.
    create_private_file(path)
    for companion in ("-wal", "-shm", "-journal"):
        ensure_private_file(path.with_name(path.name + companion))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # A committed transaction (and so a ledger entry) survives power loss, not only a crash: NORMAL,
    # plus an fsync of the write-ahead log after each commit (StationStore.sync_log), is exactly what
    # FULL does, with that fsync taken out of SQLite so that the ingest pipeline can run it off the
    # event loop, once for a group of commits. Write only through StationStore.transaction() (which
    # syncs) or unsynced_transaction() followed by sync_log() before anything relies on it.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def lock_store(root: Path, purpose: str) -> StoreLock:
    """Take the store's lock (creating the store directory if needed); `StoreBusy` names the holder,
    `StoreError` says why the directory cannot be used."""
    try:
        ensure_private_dir(root)  # 0700 whatever the umask, each new level fsynced in its parent
        return StoreLock.acquire(
            root,
            purpose=purpose,
            advice="Stop it first (the agent: systemctl stop edge-station), or wait until it is done; "
            "`edge verify` reads a store without this lock",
        )
    except StoreBusy:
        raise
    except OSError as exc:
        raise StoreError(f"station store {root} cannot be used: {exc.strerror or exc}") from None


def adopt_store_owner(layout: StoreLayout) -> list[Path]:
    """Run as root on a store that belongs to another user (the service user): every file or directory
    an administrative command can have created in the store (its top level, SQLite's -wal/-shm, keys/)
    takes the store directory's owner and group, so that the agent can still open it. Returns what was
    changed; nothing when not root or when everything already belongs to the store's owner."""
    if os.geteuid() != 0:
        return []
    root = layout.root
    candidates = [
        layout.keys_dir, layout.tmp, layout.items, layout.db, layout.wal, root / "state.db-shm",
        root / "state.db-journal", layout.reserve, root / LOCK_FILE_NAME,
    ]
    if layout.keys_dir.is_dir():
        candidates += sorted(layout.keys_dir.iterdir())
    changed = [path for path in candidates if adopt_owner(path, root)]
    if changed:
        log.info("store %s: %d file(s) a root-run command created now belong to the store's owner", root,
                 len(changed))
    return changed


class StationStore:
    """Opens (creating on first run) a station store and gives the ledger and state tables.

    Raises `StoreBusy` when another process holds the store, and `StoreError` when the store cannot be
    used as configured (directory, database or key unusable, another station's store). `purpose` says
    what this process is, for the message another process gets while this one holds the store.
    """

    def __init__(self, root: Path, station_id: str, *, purpose: str = "station store") -> None:
        self.layout = StoreLayout(root)
        self._path_roots: tuple[str, str] | None = None  # the root as given and resolved (scrubbing)
        self.station_id = station_id
        self._lock = lock_store(root, purpose)
        try:
            self._open(root, station_id)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, root: Path, station_id: str) -> None:
        try:
            for directory in (self.layout.keys_dir, self.layout.tmp, self.layout.items):
                ensure_private_dir(directory)  # 0700 whatever the umask, each new level fsynced in its parent
            self.conn = open_db(self.layout.db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"station store {root} cannot be used: {_reason(exc)}") from None
        try:
            self.conn.executescript(SCHEMA)
            _migrate_recorder_files(self.conn)
            _drop_finished_prefix_digests(self.conn)
            Ledger.create_schema(self.conn)
            _migrate_session_order(self.conn)
            _migrate_upload_hold(self.conn)
            StationWitness.create_schema(self.conn)
            self.sync_log()  # the schema and any migration, durable before anything is built on them
            self._check_station_id()
            self.key = open_station_key(root, self.layout.private_key, self.conn)
        except (OSError, sqlite3.Error) as exc:
            self.conn.close()
            raise StoreError(f"station store {root} cannot be used: {_reason(exc)}") from None
        except StationKeyProblem as exc:
            self.conn.close()
            raise StoreError(str(exc)) from None
        except BaseException:
            self.conn.close()
            raise
        self.ledger = Ledger(self.conn, station_id, self.key, scrub=self.scrub_error_text)
        # Each committed ledger entry is also one log line with its fields (edge.ingest.events).
        self.events = LedgerEventLog(station_id)
        self.hold_reserve()
        adopt_store_owner(self.layout)  # `sudo edge tag ...` must not leave files the agent cannot open

    def scrub_error_text(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """`data` with no station path in its error prose (for ledger entries and manifests, which
        leave the station): the store's own paths and any other absolute path are replaced."""
        if self._path_roots is None:  # once: realpath costs a system call per path component
            root = str(self.layout.root)
            self._path_roots = (root, os.path.realpath(root))
        scrubbed: dict[str, Any] = scrub_error_text(data, self._path_roots)
        return scrubbed

    def hold_reserve(self) -> None:
        """Hold RESERVE_BYTES of disk for the ledger (best effort: not when the disk is already full).

        When evidence fills the disk, `release_reserve` frees it, so the entry that says the disk is
        full can still be committed."""
        if self.layout.reserve.exists():
            return
        try:
            write_atomic(self.layout.reserve, bytes(RESERVE_BYTES), 0o600)
        except OSError as exc:
            log.warning("cannot hold %d bytes in reserve for the ledger: %s", RESERVE_BYTES, exc.strerror)

    def release_reserve(self) -> None:
        self.layout.reserve.unlink(missing_ok=True)

    def _check_station_id(self) -> None:
        recorded = read_station_id(self.conn)
        if recorded is None:
            with self.transaction():
                self.conn.execute("INSERT INTO station(key, value) VALUES ('id', ?)", (self.station_id,))
        elif recorded != self.station_id:
            raise StoreError(
                f"{self.layout.root} belongs to station {recorded!r}, not {self.station_id!r}; "
                "a store is never shared between stations"
            )

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic unit: state rows and the ledger entries that describe them, durable when the
        block ends."""
        return self._synced_transaction()

    @contextmanager
    def _synced_transaction(self) -> Iterator[sqlite3.Connection]:
        with self._logged_transaction() as conn:
            yield conn
        self.sync_log()

    def unsynced_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A transaction that is committed but durable only after the next `sync_log()`: nothing may
        act on it before then (the pipeline's group commit syncs off the event loop)."""
        return self._logged_transaction()

    @contextmanager
    def _logged_transaction(self) -> Iterator[sqlite3.Connection]:
        """`immediate_transaction`, and once it committed, a log line per ledger entry it appended (the
        head before and after, read inside the exclusive transaction, bracket exactly its entries)."""
        with immediate_transaction(self.conn) as conn:
            before = self._head_seq()
            yield conn
            after = self._head_seq()
        if before is not None and after is not None and after > before:
            self.events.committed(e for e in self.ledger.entries(before + 1) if e.seq <= after)

    def _head_seq(self) -> int | None:
        # A damaged head row is `edge verify`'s to report; it must not stop transactions or the log.
        ledger: Ledger | None = getattr(self, "ledger", None)  # opening runs transactions before it exists
        if ledger is None:
            return None
        try:
            return ledger.head()[0]
        except LedgerError:
            return None

    def sync_log(self) -> None:
        """Make every transaction committed so far survive power loss: fsync the write-ahead log
        (what SQLite's synchronous=FULL does after each commit). Safe from any thread."""
        try:
            fd = os.open(self.layout.wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # no log (checkpointed and removed): the database file holds it all
            fd = os.open(self.layout.db, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def record(self, type_: str, item: str | None, data: dict[str, Any]) -> LedgerEntry:
        """Append one ledger entry in its own transaction (for events with no state change)."""
        with self.transaction():
            return self.ledger.append(type_, item, data)

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self._lock.release()


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _drop_finished_prefix_digests(conn: sqlite3.Connection) -> None:
    """Stores made before the receipt, the purge and a final refusal dropped an item's prefix digests (its
    upload's cache, edge.ingest.prefix_digests) keep them for items out of the upload path: drop those."""
    with immediate_transaction(conn):
        conn.execute(
            "DELETE FROM prefix_digests WHERE item IN "
            "(SELECT item FROM uploads WHERE state IN ('receipted', 'rejected') OR purged IS NOT NULL)"
        )


def _migrate_recorder_files(conn: sqlite3.Connection) -> None:
    """Stores made before the ingest pipeline kept USB acquisition state in `recorder_files`: move its
    rows into `acquisitions` (same states, same items) in one transaction, so an interrupted offload
    resumes after the upgrade exactly where it stopped."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='recorder_files'"
    ).fetchone()
    if found is None:
        return
    with immediate_transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO acquisitions(source, device, original, version, item, state, attempts,"
            " last_error) SELECT 'usb', device_serial, original_path, device_size || ':' || device_mtime_ns,"
            " item, state, attempts, last_error FROM recorder_files WHERE item IS NOT NULL"
        )
        conn.execute("DROP TABLE recorder_files")
    log.info("moved the USB acquisition state of an older store into the acquisitions table")


# A recorder's dockings newest first: by the seq of their `session_started` entries (rowid only among rows no
# entry was found for when an older store was migrated).
SESSION_ORDER = "started_seq DESC, rowid DESC"


def _migrate_session_order(conn: sqlite3.Connection) -> None:
    """Stores made before `sessions.started_seq`: the column added and filled from each session's
    `session_started` ledger entry (the hash chain fixes its seq), in one transaction; then its index. Which
    docking of a recorder is the latest (the desk, the fleet, a resumed docking) is read by this order."""
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(sessions)")}
    if "started_seq" not in columns:
        with immediate_transaction(conn):
            conn.execute("ALTER TABLE sessions ADD COLUMN started_seq INTEGER")
            conn.execute(
                "UPDATE sessions SET started_seq = (SELECT min(seq) FROM ledger"
                " WHERE type = 'session_started' AND json_extract(data, '$.session') = sessions.session)")
        log.info("sessions ordered by their session_started entries (started_seq) in an older store")
    conn.execute("CREATE INDEX IF NOT EXISTS sessions_device_order ON sessions(device_serial, started_seq)")


def _migrate_upload_hold(conn: sqlite3.Connection) -> None:
    """Stores made before `uploads.held_seq` kept a damaged copy's hold in the uplink's memory only: the
    column is added (empty: such an item is held again, with its entry, when next found changed)."""
    columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(uploads)")}
    if "held_seq" not in columns:
        with immediate_transaction(conn):
            conn.execute("ALTER TABLE uploads ADD COLUMN held_seq INTEGER")
        log.info("uploads can be held until re-acquired (held_seq) in an older store")


class StoreError(Exception):
    """The store cannot be used as configured (restarting cannot fix it; the message says what can)."""
