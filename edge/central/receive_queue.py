"""The MQTT receiver's durable local queue: a message is acknowledged to the broker once it is here, and
handled from here, per station in order, a few stations at a time.

Why. The broker sends a connection at most ``max_inflight_messages`` (Mosquitto: 20) unacknowledged QoS 1
messages. A receiver that acknowledges a message only when its handling ends lets one station's slow
message (a registration re-hashing a large file, a ``fin`` verifying one) and the messages waiting behind
it fill that window: every other station stalls until it ends (review 10, finding 1). Holding messages
unacknowledged in memory had further faults: a message held over a bound was overtaken by its station's
later ones, and after a broker crash a resumed session could lack messages the receiver had dropped as
"the broker sends them again" (finding 2). Here a message is committed to SQLite (WAL,
``synchronous=FULL``: the commit is on disk when :meth:`ReceiveQueue.add` returns) and then acknowledged;
a process killed between the acknowledgement and the handling finds it again at its next start.

Where. One file per receiving process, ``<transfers_dir>/receive-queue/<name>.sqlite3`` (the central:
``central``; a worker ``edge central mqtt-worker --client-id NAME``: ``worker-NAME``), under the directory
a worker's sandbox may write. Each process has its own broker session and the broker hands each message of
a shared subscription to one of them, so no message is in two queues; the file is locked
(``<name>.sqlite3.lock``, ``flock``) so that two processes under one name are refused instead of both
handling its rows.

Bound. Per station, at most ``per_station_messages`` messages and ``per_station_bytes`` bytes of payload
wait (the stations' lanes together). What a station sends beyond it is not queued: the caller answers it at
once as the station already treats "busy, later" (a ``fin``: 0x97 quota exceeded, which pauses the upload;
an API request: 503 ``server_busy``) and the message is acknowledged; it is never held unacknowledged.

Order. Messages are handled per *lane* (``content``: file-transfer commands; ``api``: the station API) and
station, one at a time in the order they were queued; up to ``concurrency`` stations of each lane at once
(each lane has its own slots, so stations' slow fins never hold up another station's API request: review
13), taken round robin, one message per turn, so that one station's backlog does not starve the others. A
duplicate of a message still waiting (the broker's redelivery after an acknowledgement lost with a
connection) is not queued twice (topic, payload and lane digest). Handling is at least once: a message is
removed only after its handler returned, so a process killed while handling handles it again.

Expiry. A row keeps what was left of the message's MQTT 5 Message Expiry at delivery, as a wall-clock
deadline (``expires_at``; a process queuing it also keeps a monotonic one in memory). A message whose
expiry passed before its turn is removed unhandled (the station gave up on it and sends it again under a
new id: handling it would double the work exactly when the queue is slow, review 13), counted and logged
at most once a minute; see :meth:`ReceiveQueue.expired` for why the judgement is conservative.

Damage. Each row carries the SHA-256 of its lane, topic and payload; a row that does not match (or whose
columns are not what this module writes) is removed, reported to ``on_damaged`` (a coroutine: the receiver
records an incident in a worker thread and logs it, naming the row and station), and the queue goes on with
the next.
A file that is not a queue at all (not SQLite, a failed quick_check, another schema) is set aside and a new
one made; a file that cannot be used *now* (sqlite3.OperationalError: locked, I/O error, disk full) is left
as it is and :class:`QueueUnavailable` fails the start (review 13: a good file set aside abandoned the
messages acknowledged into it, with a false damage incident).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from edge.custody.text import printable
from edge.durable.files import ensure_private_dir, fsync_dir
from edge.durable.sqlite import apply_schema, immediate_transaction

__all__ = [
    "Admission",
    "Lane",
    "QueueBusy",
    "QueueUnavailable",
    "QueuedMessage",
    "ReceiveQueue",
    "ReceiveQueueError",
    "queue_path",
    "waiting_in",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A handler that raised is tried again after this many seconds times its failures, at most this often.
_RETRY_BASE_S = 1.0
# ...and after this many failures the message is removed as poison (one log line, never the payload).
POISON_AFTER_FAILURES = 5
# Messages dropped as expired are logged at most once per this many seconds (with the count since): under
# overload many expire at once, and one line each would flood the log exactly then.
_EXPIRED_LOG_EVERY_S = 60.0
_ROW_LIMIT_CHARS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queued (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane TEXT NOT NULL,
    station TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    correlation BLOB,
    digest BLOB NOT NULL,
    queued_at REAL NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS queued_by_lane_station ON queued (lane, station, id)
"""
_COLUMNS = ("id", "lane", "station", "topic", "payload", "correlation", "digest", "queued_at", "expires_at")
# A queue file made before expires_at (review 13) gets the column (its rows: no expiry).
_COLUMNS_BEFORE_EXPIRY = _COLUMNS[:-1]


class Lane(StrEnum):
    """Which connection a message came on, and so which handler and answer it gets."""

    CONTENT = "content"
    API = "api"


class Admission(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    """The same message (lane, topic, payload) is queued already: not twice."""
    FULL = "full"
    """The station is at its bound: answer busy, acknowledge, queue nothing."""


class ReceiveQueueError(Exception):
    """The queue cannot be opened: its file is not a usable queue (set aside by :meth:`ReceiveQueue.open`),
    or (:class:`QueueUnavailable`) it cannot be used now."""


class QueueUnavailable(ReceiveQueueError):
    """The queue file cannot be used now (database locked, disk I/O error, disk full, cannot be opened:
    sqlite3.OperationalError), which says nothing of its content: it is left as it is, with the messages
    acknowledged into it, and the process fails its start (exit 75: systemd starts it again)."""


class QueueBusy(QueueUnavailable):
    """Another process holds this queue's lock."""


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    lane: Lane
    station: str
    topic: str
    payload: bytes
    correlation_data: bytes | None
    queued_at: float
    expires_at: float | None = None
    """Wall-clock time (time.time()) after which the station no longer wants an answer (its MQTT 5 Message
    Expiry); None: no expiry."""


@dataclass
class _Waiting:
    """What is known in memory of a station's waiting messages (rebuilt from the file at open)."""

    messages: int = 0
    payload_bytes: int = 0


def queue_path(transfers_dir: Path, name: str) -> Path:
    """The queue file of the receiving process ``name`` ("central", "worker-<name>")."""
    return transfers_dir / "receive-queue" / f"{name}.sqlite3"


def waiting_in(path: Path) -> tuple[int, float | None]:
    """Messages waiting in the queue file ``path`` and the wall-clock time the oldest was queued (None when
    none wait), read only (no lock: the file may be another process's, running or gone), for
    ``edge central verify``: a worker renamed or removed leaves its messages unhandled until a process
    starts under its name again. Raises sqlite3.Error when the file cannot be read."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        count, oldest = conn.execute("SELECT count(*), min(queued_at) FROM queued").fetchone()
    finally:
        conn.close()
    return int(count), float(oldest) if isinstance(oldest, (int, float)) else None


def _digest(lane: str, topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(lane.encode() + b"\0" + topic.encode("utf-8", "surrogateescape") + b"\0"
                          + payload).digest()


class ReceiveQueue:
    """The queue file and its bookkeeping; the methods that touch the file block (fsync) and are called
    on the queue's own thread (:meth:`call`), the others on the event loop. See the module docstring."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int, *, per_station_messages: int,
                 per_station_bytes: int) -> None:
        self.path = path
        self._conn = conn
        # One connection, used from worker threads of several coroutines (handlers inserting, the runner
        # reading and deleting): one statement or transaction at a time.
        self._db = threading.Lock()
        # The queue's own thread: an insert (what an acknowledgement waits for) never waits behind the
        # default executor's threads, which fins and registrations keep busy hashing whole files.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receive-queue")
        self._lock_fd: int | None = lock_fd
        self.per_station_messages = per_station_messages
        self.per_station_bytes = per_station_bytes
        self._waiting: dict[str, _Waiting] = {}
        self._digests: set[bytes] = set()
        # Expiry deadlines on the monotonic clock of the rows this process queued (row id: deadline): a
        # wall clock stepped forward does not expire them early. Rows from before a restart have only
        # their wall-clock expires_at.
        self._deadlines: dict[int, float] = {}
        # Lane-stations with messages waiting, in the order they are to be served (round robin).
        self._lanes: OrderedDict[tuple[Lane, str], int] = OrderedDict()
        # What was wrong with the file found at open, which was set aside (None: it was fine).
        self.set_aside: str | None = None
        self.added = 0
        self.refused_full = 0
        self.duplicates = 0
        self.damaged = 0

    def __repr__(self) -> str:
        return f"ReceiveQueue({str(self.path)!r}, {self.waiting} waiting)"

    @classmethod
    def open(cls, path: Path, *, per_station_messages: int, per_station_bytes: int) -> ReceiveQueue:
        """Open (or make) the queue file and read what waits in it. A file that is not a queue (not SQLite,
        damaged, another schema) is set aside (:attr:`set_aside`) and a new one made. Raises
        :class:`QueueBusy` when another process holds it, :class:`QueueUnavailable` when it cannot be used
        now (left as it is)."""
        if per_station_messages < 1 or per_station_bytes < 1:
            raise ValueError("a receive queue needs room for at least one message per station")
        try:
            ensure_private_dir(path.parent)
            lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise QueueUnavailable(f"receive queue {path}: cannot open its lock: {exc}") from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QueueBusy(f"receive queue {path} is in use by another process: each receiving process "
                                "needs its own name (a worker's --client-id)") from None
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            try:
                return cls._open_locked(path, lock_fd, per_station_messages, per_station_bytes, None)
            except QueueUnavailable:
                # Locked, an I/O error, a full disk: nothing says the file is damaged, and setting it aside
                # would abandon the messages acknowledged into it (review 13). The start fails instead.
                raise
            except ReceiveQueueError as exc:
                # A file that is not a usable queue (damaged on disk, or something else put there) would
                # stop this process from receiving anything: it is set aside, named in the log and in an
                # incident (set_aside), and a new queue starts. What it held is lost to this process; the
                # stations send again whatever they have no answer for.
                aside = _set_aside(path)
                log.error("%s; set aside as %s, and a new queue starts", exc, aside.name)
                return cls._open_locked(path, lock_fd, per_station_messages, per_station_bytes,
                                        f"{exc}; set aside as {aside}")
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, path: Path, lock_fd: int, per_station_messages: int, per_station_bytes: int,
                     set_aside: str | None) -> ReceiveQueue:
        conn = _connect(path)
        queue = cls(path, conn, lock_fd, per_station_messages=per_station_messages,
                    per_station_bytes=per_station_bytes)
        queue.set_aside = set_aside
        try:
            queue._load()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            raise
        return queue

    async def call(self, method: Callable[..., T], *args: object) -> T:
        """``method(*args)`` on the queue's own thread (for the methods that touch the file)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, method, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._db, contextlib.suppress(sqlite3.Error):
            self._conn.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _load(self) -> None:
        try:
            rows = self._conn.execute(
                "SELECT id, lane, station, length(payload), digest FROM queued ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            raise QueueUnavailable(f"receive queue {self.path}: cannot be read now: {exc}; the file is left "
                                   "as it is") from None
        except sqlite3.DatabaseError as exc:
            raise ReceiveQueueError(f"receive queue {self.path}: cannot be read: {exc}") from None
        for _row_id, lane, station, size, digest in rows:
            # A row whose lane or station this module would never write is counted under (content, ""),
            # whose head() finds it, so that it gets its turn and is found damaged then.
            valid = lane in Lane._value2member_map_ and isinstance(station, str) and station != ""
            lane_value = Lane(lane) if valid else Lane.CONTENT
            station_text = station if valid else ""
            waiting = self._waiting.setdefault(station_text, _Waiting())
            waiting.messages += 1
            waiting.payload_bytes += size if isinstance(size, int) else 0
            if isinstance(digest, bytes):
                self._digests.add(digest)
            key = (lane_value, station_text)
            self._lanes[key] = self._lanes.get(key, 0) + 1

    # -- on the event loop --------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        # Also read by a /metrics scrape in a reader thread: list() copies the values at once (under the
        # GIL), so a message the loop adds meanwhile cannot fail the iteration.
        return sum(w.messages for w in list(self._waiting.values()))

    def waiting_of(self, station: str) -> tuple[int, int]:
        """Messages and payload bytes of ``station`` waiting."""
        waiting = self._waiting.get(station)
        return (waiting.messages, waiting.payload_bytes) if waiting is not None else (0, 0)

    def reserve(self, lane: Lane, station: str, topic: str, payload: bytes) -> tuple[Admission, bytes]:
        """Decide (on the event loop, before the insert) whether the message is queued, and count it
        when it is: the bound holds however many handlers insert at once. Returns the admission and the
        message's digest (for :meth:`insert` or :meth:`unreserve`)."""
        digest = _digest(lane.value, topic, payload)
        if digest in self._digests:
            self.duplicates += 1
            return Admission.DUPLICATE, digest
        waiting = self._waiting.setdefault(station, _Waiting())
        if (waiting.messages + 1 > self.per_station_messages
                or waiting.payload_bytes + len(payload) > self.per_station_bytes):
            self.refused_full += 1
            if not waiting.messages:
                del self._waiting[station]
            return Admission.FULL, digest
        waiting.messages += 1
        waiting.payload_bytes += len(payload)
        self._digests.add(digest)
        return Admission.ADDED, digest

    def unreserve(self, station: str, payload_bytes: int, digest: bytes) -> None:
        """Gives back a reservation whose insert failed."""
        self._forget(station, payload_bytes, digest)

    def queued(self, lane: Lane, station: str) -> None:
        """After :meth:`insert`: the message waits for its lane-station's turn."""
        key = (lane, station)
        self._lanes[key] = self._lanes.get(key, 0) + 1
        self.added += 1

    def next_lanes(self, busy: set[tuple[Lane, str]], room: dict[Lane, int]) -> list[tuple[Lane, str]]:
        """Up to ``room[lane]`` lane-stations of each lane with a message waiting that are not in ``busy``,
        longest unserved first; each moves to the end of the round."""
        left = dict(room)
        chosen: list[tuple[Lane, str]] = []
        for key in list(self._lanes):
            if not any(n > 0 for n in left.values()):
                break
            if key in busy or left.get(key[0], 0) <= 0:
                continue
            left[key[0]] -= 1
            chosen.append(key)
            self._lanes.move_to_end(key)
        return chosen

    def forget_lane(self, key: tuple[Lane, str]) -> None:
        """A lane-station found empty in the file is no longer offered."""
        self._lanes.pop(key, None)

    def _forget(self, station: str, payload_bytes: int, digest: bytes | None) -> None:
        waiting = self._waiting.get(station)
        if waiting is not None:
            waiting.messages -= 1
            waiting.payload_bytes -= payload_bytes
            if waiting.messages <= 0:
                del self._waiting[station]
        if digest is not None:
            self._digests.discard(digest)

    def removed(self, lane: Lane, station: str, payload_bytes: int, digest: bytes | None) -> None:
        """After :meth:`delete`: the message no longer waits."""
        self._forget(station, payload_bytes, digest)
        key = (lane, station)
        left = self._lanes.get(key, 0) - 1
        if left > 0:
            self._lanes[key] = left
        else:
            self._lanes.pop(key, None)

    # -- in a worker thread (they block on the disk) -------------------------------------------------

    def insert(self, lane: Lane, station: str, topic: str, payload: bytes, correlation_data: bytes | None,
               digest: bytes, expiry_s: int | None = None) -> int:
        """Commit one message; on disk when this returns (synchronous=FULL). ``expiry_s``: what is left of
        its MQTT 5 Message Expiry Interval (None: none), kept as a wall-clock deadline in the row and a
        monotonic one in memory (see :meth:`expired`)."""
        now = time.time()
        expires_at = None if expiry_s is None else now + expiry_s
        with self._db, immediate_transaction(self._conn):
            cursor = self._conn.execute(
                "INSERT INTO queued (lane, station, topic, payload, correlation, digest, queued_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (lane.value, station, topic, payload, correlation_data, digest, now, expires_at))
        assert cursor.lastrowid is not None
        if expiry_s is not None:
            self._deadlines[cursor.lastrowid] = time.monotonic() + expiry_s
        return cursor.lastrowid

    def expired(self, message: QueuedMessage) -> bool:
        """Whether ``message``'s expiry has passed, judged conservatively (a message wrongly taken as
        expired goes unanswered; one wrongly handled only costs work): its wall-clock deadline has passed,
        the wall clock is not before its queueing (stepped back: cannot tell), and, for a row queued by
        this process, its monotonic deadline has passed too (a wall clock stepped forward cannot expire
        it)."""
        if message.expires_at is None:
            return False
        now = time.time()
        if now < message.expires_at or now < message.queued_at:
            return False
        deadline = self._deadlines.get(message.id)
        return deadline is None or time.monotonic() >= deadline

    def head(self, lane: Lane, station: str) -> QueuedMessage | str | None:
        """The oldest message of a lane-station; a string naming what is wrong when its row is damaged
        (:meth:`delete` it), None when nothing waits."""
        with self._db:
            return self._head(lane, station)

    def _head(self, lane: Lane, station: str) -> QueuedMessage | str | None:
        row = self._conn.execute(
            "SELECT id, lane, station, topic, payload, correlation, digest, queued_at, expires_at "
            "FROM queued WHERE lane = ? AND station = ? ORDER BY id LIMIT 1",
            (lane.value, station)).fetchone()
        if row is None and station == "" and lane is Lane.CONTENT:
            # Rows whose lane or station this module would never write were counted under this key.
            row = self._conn.execute(
                "SELECT id, lane, station, topic, payload, correlation, digest, queued_at, expires_at "
                "FROM queued WHERE lane NOT IN (?, ?) OR typeof(station) != 'text' OR station = '' "
                "ORDER BY id LIMIT 1",
                (Lane.CONTENT.value, Lane.API.value)).fetchone()
        if row is None:
            return None
        row_id, lane_text, station_text, topic, payload, correlation, digest, queued_at, expires_at = row
        problem = _row_problem(lane_text, station_text, topic, payload, correlation, digest, queued_at,
                               expires_at)
        if problem is not None:
            return f"row {row_id}: {problem}"
        return QueuedMessage(row_id, Lane(lane_text), station_text, topic, payload, correlation, queued_at,
                             float(expires_at) if expires_at is not None else None)

    def head_id(self, lane: Lane, station: str) -> tuple[int, int, bytes | None] | None:
        """Id, payload size and digest of the row :meth:`head` returned damaged (to remove and forget)."""
        with self._db:
            return self._head_id(lane, station)

    def _head_id(self, lane: Lane, station: str) -> tuple[int, int, bytes | None] | None:
        row = self._conn.execute(
            "SELECT id, length(payload), digest FROM queued WHERE lane = ? AND station = ? "
            "ORDER BY id LIMIT 1", (lane.value, station)).fetchone()
        if row is None and station == "" and lane is Lane.CONTENT:
            row = self._conn.execute(
                "SELECT id, length(payload), digest FROM queued WHERE lane NOT IN (?, ?) "
                "OR typeof(station) != 'text' OR station = '' ORDER BY id LIMIT 1",
                (Lane.CONTENT.value, Lane.API.value)).fetchone()
        if row is None:
            return None
        row_id, size, digest = row
        return row_id, size if isinstance(size, int) else 0, digest if isinstance(digest, bytes) else None

    def delete(self, row_id: int) -> None:
        """Remove a handled message. Not fsynced on its own (the next insert's commit, or a checkpoint,
        carries it to disk): a removal lost to a power cut only means the message is handled again, which
        handlers allow (at least once), and it halves the fsyncs per message (~6 ms to ~3 ms here)."""
        with self._db:
            self._conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with immediate_transaction(self._conn):
                    self._conn.execute("DELETE FROM queued WHERE id = ?", (row_id,))
            finally:
                self._conn.execute("PRAGMA synchronous = FULL")
        self._deadlines.pop(row_id, None)


def _connect(path: Path) -> sqlite3.Connection:
    """The queue file's connection. Raises :class:`QueueUnavailable` for a condition of the moment
    (sqlite3.OperationalError: locked, I/O error, disk full, cannot open), :class:`ReceiveQueueError` for a
    file that is not a queue (not SQLite or damaged: another sqlite3.DatabaseError, a failed quick_check,
    another schema)."""
    created = not path.exists()
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit is fsynced before it returns (WAL's default NORMAL may lose the last commits
        # on power loss: messages the broker was told we hold).
        conn.execute("PRAGMA synchronous = FULL")
        _check_file(conn, path)
        with immediate_transaction(conn):
            apply_schema(conn, _SCHEMA)
    except BaseException as exc:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if isinstance(exc, sqlite3.OperationalError):
            raise QueueUnavailable(f"receive queue {path}: cannot be used now ({exc}); the file is left as "
                                   "it is, with the messages in it") from None
        if isinstance(exc, sqlite3.DatabaseError):
            raise ReceiveQueueError(f"receive queue {path}: not a usable SQLite file: {exc}") from None
        raise
    if created:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        fsync_dir(path.parent)  # the new file's (and its WAL's) names are durable too
    return conn


def _check_file(conn: sqlite3.Connection, path: Path) -> None:
    """Raises :class:`ReceiveQueueError` when the file fails SQLite's quick_check or holds a ``queued``
    table other than this module's (its other errors are raised as they come, for :func:`_connect`)."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        raise ReceiveQueueError(f"receive queue {path}: not a usable SQLite file: quick_check: "
                                f"{printable('; '.join(problems))[:_ROW_LIMIT_CHARS]}")
    columns = [str(row[1]) for row in conn.execute("PRAGMA table_info(queued)").fetchall()]
    if columns == list(_COLUMNS_BEFORE_EXPIRY):
        with immediate_transaction(conn):
            conn.execute("ALTER TABLE queued ADD COLUMN expires_at REAL")
    elif columns and columns != list(_COLUMNS):
        raise ReceiveQueueError(f"receive queue {path}: not a receive queue: its table has the columns "
                                f"{printable(', '.join(columns))[:_ROW_LIMIT_CHARS]}")


def _set_aside(path: Path) -> Path:
    """Renames an unusable queue file (and its WAL and shared memory) out of the way; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    fsync_dir(path.parent)
    return aside


def _row_problem(lane: object, station: object, topic: object, payload: object, correlation: object,
                 digest: object, queued_at: object, expires_at: object = None) -> str | None:
    """What is wrong with a row, or None (it is what :meth:`ReceiveQueue.insert` writes)."""
    if lane not in Lane._value2member_map_:
        return f"unknown lane {printable(repr(lane))[:_ROW_LIMIT_CHARS]}"
    if not isinstance(station, str) or not station:
        return f"no station ({printable(repr(station))[:_ROW_LIMIT_CHARS]})"
    if not isinstance(topic, str) or not isinstance(payload, bytes):
        return "topic or payload of the wrong type"
    if correlation is not None and not isinstance(correlation, bytes):
        return "correlation data of the wrong type"
    if not isinstance(queued_at, (int, float)):
        return "no queueing time"
    if expires_at is not None and not isinstance(expires_at, (int, float)):
        return "an expiry of the wrong type"
    if not isinstance(digest, bytes) or digest != _digest(str(lane), topic, payload):
        return "its SHA-256 does not match its lane, topic and payload (changed on disk)"
    return None


Handler = Callable[[QueuedMessage], Awaitable[None]]
DamageReport = Callable[[str, str], Awaitable[None]]
"""Awaited with the station (may be empty) and a sentence naming the damaged row; a coroutine, so that
what it writes (the MQTT store's incident, fsync'd) goes to a worker thread, not the event loop."""


class QueueRunner:
    """Handles a :class:`ReceiveQueue`'s messages: per lane-station one at a time in order, up to
    ``concurrency`` stations of each lane at once (see the module docstring). Run :meth:`run` as a task."""

    def __init__(self, queue: ReceiveQueue, handlers: dict[Lane, Handler], *, concurrency: int,
                 on_damaged: DamageReport, on_expired: Callable[[QueuedMessage], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.queue = queue
        self._handlers = handlers
        self._concurrency = concurrency
        self._on_damaged = on_damaged
        self._on_expired = on_expired
        self._expired_logged_at: float | None = None
        self._expired_unlogged = 0
        self._busy: set[tuple[Lane, str]] = set()
        # Lane-stations resting after their handler raised, until the loop time in the value.
        self._resting: dict[tuple[Lane, str], float] = {}
        self._failures: dict[int, int] = {}
        self._wake = asyncio.Event()
        self.handled = 0
        self.poison = 0
        self.expired = 0

    def __repr__(self) -> str:
        return f"QueueRunner({self.queue!r}, {len(self._busy)} handling)"

    def wake(self) -> None:
        self._wake.set()

    async def add(self, lane: Lane, station: str, topic: str, payload: bytes,
                  correlation_data: bytes | None, *, expiry_s: int | None = None) -> Admission:
        """Queue one message durably (or say why not); the caller acknowledges it to the broker after.
        ``expiry_s``: what is left of its MQTT 5 Message Expiry Interval (None: none); a message whose
        expiry passed before its turn is removed unhandled then."""
        admission, digest = self.queue.reserve(lane, station, topic, payload)
        if admission is not Admission.ADDED:
            return admission
        try:
            await self.queue.call(self.queue.insert, lane, station, topic, payload, correlation_data, digest,
                                  expiry_s)
        except BaseException:
            self.queue.unreserve(station, len(payload), digest)
            raise
        self.queue.queued(lane, station)
        self._wake.set()
        return admission

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                now = asyncio.get_running_loop().time()
                for key, until in list(self._resting.items()):
                    if until <= now:
                        del self._resting[key]
                # Each lane has its own slots: stations' slow fins (a whole-file re-hash each, many at
                # once at a shift change) never hold up another station's quick API request (review 13).
                room = {lane: self._concurrency - sum(1 for busy_lane, _ in self._busy if busy_lane is lane)
                        for lane in Lane}
                if any(n > 0 for n in room.values()):
                    for key in self.queue.next_lanes(self._busy | set(self._resting), room):
                        self._busy.add(key)
                        task = asyncio.create_task(self._one(key), name=f"receive-queue-{key[0]}-{key[1]}")
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                timeout_s = (min(self._resting.values()) - now) if self._resting else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await self._wake.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, key: tuple[Lane, str]) -> None:
        """Handles the oldest message of one lane-station, then gives the turn back."""
        lane, station = key
        try:
            head = await self.queue.call(self.queue.head, lane, station)
            if head is None:
                # Counted but not in the file (an insert cancelled after its commit began is counted at
                # the next open instead): forgotten, or the round would offer it again at once, for ever.
                self.queue.forget_lane(key)
                return
            if isinstance(head, str):
                await self._remove_damaged(lane, station, head)
                return
            if self.queue.expired(head):
                # The station gave up on it (and sends it again, under a new request id if it still wants
                # it): handling it now would be work for nobody, a registration re-hashing a whole file.
                await self.queue.call(self.queue.delete, head.id)
                self.queue.removed(lane, station, len(head.payload),
                                   _digest(lane.value, head.topic, head.payload))
                self._note_expired(head)
                return
            try:
                await self._handlers[head.lane](head)
            except asyncio.CancelledError:
                raise  # stopping: the message stays queued and is handled at the next start
            except Exception:
                if self._failed(head):
                    return
            else:
                self.handled += 1
            self._failures.pop(head.id, None)
            await self.queue.call(self.queue.delete, head.id)
            self.queue.removed(lane, station, len(head.payload),
                               _digest(lane.value, head.topic, head.payload))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The queue file itself failed (disk error): rest this lane-station and try again.
            log.exception("receive queue %s: station %s (%s) could not be served; trying again",
                          self.queue.path, printable(station)[:64], lane.value)
            self._rest(key, _RETRY_BASE_S * 5)
        finally:
            self._busy.discard(key)
            self._wake.set()

    def _failed(self, message: QueuedMessage) -> bool:
        """Counts a failed handling: True to keep the message (tried again later), False when it is
        poison and is to be removed."""
        failures = self._failures.get(message.id, 0) + 1
        if failures >= POISON_AFTER_FAILURES:
            self.poison += 1
            self._failures.pop(message.id, None)
            log.error("receive queue %s: the message on %.200s (%d bytes, SHA-256 %s) failed its handler %d "
                      "times: removed as poison (the station sends it again if it still needs an answer)",
                      self.queue.path, printable(message.topic), len(message.payload),
                      hashlib.sha256(message.payload).hexdigest(), failures)
            return False
        self._failures[message.id] = failures
        log.exception("receive queue %s: handling the message on %.200s failed (%d of %d); it stays queued",
                      self.queue.path, printable(message.topic), failures, POISON_AFTER_FAILURES)
        self._rest((message.lane, message.station), _RETRY_BASE_S * failures)
        return True

    def _note_expired(self, message: QueuedMessage) -> None:
        self.expired += 1
        if self._on_expired is not None:
            try:
                self._on_expired(message)
            except Exception:
                log.exception("receive queue %s: counting an expired message failed", self.queue.path)
        now = asyncio.get_running_loop().time()
        self._expired_unlogged += 1
        if self._expired_logged_at is None or now - self._expired_logged_at >= _EXPIRED_LOG_EVERY_S:
            log.warning("receive queue %s: %d message(s) removed unhandled since the last such line: their "
                        "MQTT Message Expiry passed while they waited (the latest on %.200s); the stations "
                        "gave up on them", self.queue.path, self._expired_unlogged, printable(message.topic))
            self._expired_logged_at = now
            self._expired_unlogged = 0

    def _rest(self, key: tuple[Lane, str], delay_s: float) -> None:
        self._resting[key] = asyncio.get_running_loop().time() + delay_s

    async def _remove_damaged(self, lane: Lane, station: str, problem: str) -> None:
        found = await self.queue.call(self.queue.head_id, lane, station)
        if found is None:
            return
        row_id, size, digest = found
        await self.queue.call(self.queue.delete, row_id)
        self.queue.removed(lane, station, size, digest)
        self.queue.damaged += 1
        detail = (f"receive queue {self.queue.path}: {problem}; the row is removed unhandled (the station "
                  "sends again what it has no answer for)")
        log.error("%s", detail)
        try:
            await self._on_damaged(station, detail)
        except Exception:
            log.exception("receive queue %s: recording the damaged row failed", self.queue.path)
