"""Room sessions on a station: start, stop, mark, change, status; resumed after a restart.

:class:`RoomService` is what the local API (and through it `edge room`) calls. Every request is checked
before anything happens: an unknown room, a second session in a room that has one, a bad case number or
any other field :mod:`edge.rooms.session` refuses, a mark or stop where nothing records, is refused with
:class:`RoomRefused` (the message names what was wrong) and a `refused` ledger entry; the agent runs on.

* start: the session file is written (:mod:`edge.rooms.state`), then `session_started` (``kind`` room:
  case, location, persons, who started it), then its recording starts (:mod:`edge.rooms.recording`);
* mark: a `mark` entry (note, who); change: `session_changed` with what changed from what to what; the
  segments sealed from then on carry the new case block (ffmpeg's own tags keep the values the run
  started with until its next run);
* stop: every source closes its last segment and everything is sealed, then the signed session manifest
  (:mod:`edge.rooms.manifest`) is sealed as an item, then `session_stopped` names it.

:meth:`RoomService.run` is the supervised task: it resumes every session a stop or crash of the agent
left recording (a gap on each source from its last sealed segment, the leftovers sealed first) and, when
the agent stops, interrupts them (a gap opens; the session itself goes on at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from edge.config.rooms import RoomConfig, RoomsSection
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.ledger import EntryType, LedgerEntry, station_time_now
from edge.custody.manifest import sign_manifest
from edge.custody.text import printable
from edge.durable.files import free_bytes, make_dirs_durable, write_atomic
from edge.gb28181.live import LiveStreams
from edge.ingest.kept_space import DOWNLOAD_BOOKING, KeptFree, KeptSpace, said_bookings
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.composite import derived_of, room_outputs
from edge.rooms.documents import DocumentRefused, attach_document
from edge.rooms.export import ExportedDisc, ExportRefused, export_session
from edge.rooms.joined import PRODUCTS_DIR
from edge.rooms.manifest import session_manifest
from edge.rooms.overlay_text import check_extra_line
from edge.rooms.owed import OwedIndex
from edge.rooms.products import Products, make_products, products_dir
from edge.rooms.reconcile import (
    COMPLETED_MANIFEST_ROLE,
    COMPLETION_TYPES,
    MANIFEST_ROLES,
    SESSION_TYPES,
    STOP_MANIFEST_TYPES,
    LedgerSession,
    completed_manifest_owed,
    disagreements,
    sessions_on_ledger,
    stop_manifest_sealed,
)
from edge.rooms.recording import SessionRecording, leftover_segments, sealed_on_ledger
from edge.rooms.reserve import RecordingReserve
from edge.rooms.sealing import SegmentSealer, seal_session_file
from edge.rooms.session import (
    MAX_NOTE,
    Mark,
    RoomSession,
    SessionError,
    SessionState,
    apply_change,
    check_mark_room,
    check_text,
    new_session,
)
from edge.rooms.space import SpaceWatch, rooms_kept_free
from edge.rooms.state import ROOMS_DIR, SessionFiles

log = logging.getLogger(__name__)

MANIFEST_NAME = "session-manifest.json"
COMPLETED_MANIFEST_NAME = "session-manifest-completed.json"
STOPPING_REASON = "the station agent stopped"
PRODUCTS_TO_FOLLOW = "to follow"
# A signed session manifest lists each sealed segment (a few hundred bytes) with its gaps, marks and
# changes: a day of 1-second segments from four sources stays under this; what the products are made from
# is read whole into memory, so nothing larger is (a forged index entry naming a recording, say).
MAX_SESSION_MANIFEST_BYTES = 128 << 20
# What an export (edge.rooms.export: a uuid4 token's first 12 hex digits) or a document being received
# (edge.rooms.documents) writes in a session's products directory, and nothing else there.
CUT_SHORT_WORK = re.compile(r"export-[0-9a-f]{12}(\.iso)?|document-[0-9a-f]{12}\.part")
# A count of bytes a caller gives (the free space where it writes an export).
_DECIMAL = re.compile(r"[0-9]{1,19}")


class RoomRefused(Exception):
    """A request about a room that was refused; `status` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class RoomService:
    def __init__(
        self,
        settings: RoomsSection,
        store: StationStore,
        pipeline: IngestPipeline,
        *,
        station_id: str,
        clock_synchronised: Callable[[], bool] = lambda: False,
        live: LiveStreams | None = None,
    ) -> None:
        self.settings = settings
        self.live = live  # GB/T 28181 live channels, for gb28181 sources (edge.rooms.gb_source)
        self.store = store
        self.pipeline = pipeline
        self.station_id = station_id
        self.clock_synchronised = clock_synchronised
        self.files = SessionFiles(store.layout.root)
        self.active: dict[str, RoomSession] = {}
        self._recordings: dict[str, SessionRecording] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._attach_lock = asyncio.Lock()
        self._running = False
        # Stopped sessions whose stop could not seal everything (a full disk): finished by run().
        self._unfinished: list[RoomSession] = []
        # Stopped sessions whose products (joined files, statement) a stop did not finish: made by run().
        self._products_pending: list[tuple[RoomSession, LedgerEntry]] = []
        self.finishing: list[asyncio.Task[None]] = []  # run()'s tasks finishing them
        # Which stopped sessions owe products, read from the ledger since the index was last saved.
        self.owed = OwedIndex(store.layout.root, store.ledger, store.key)
        # Per session, why its owed products could not be made at this start (edge room status shows it;
        # the `error` entry is written once per manifest: OwedIndex.reported).
        self.products_problems: dict[str, str] = {}
        # Per room, the status of its serial hardware (lamp panel, sensor, PTZ: edge.rooms.hardware).
        self.hardware_status: dict[str, Callable[[], dict[str, Any]]] = {}
        self.overlay_lines: dict[str, str] = {}  # per room: the composite's extra line (set_overlay_line)
        # While rooms record, no source takes the disk into the store's reserve (edge.rooms.reserve): the
        # largest writer is stopped at the reserve plus the margin, where the space warnings count to.
        self.reserve = RecordingReserve(
            store.layout.root,
            reserve_bytes=pipeline.settings.min_free_bytes,
            margin_bytes=settings.record_margin_bytes,
            check_s=settings.reserve_check_s,
            record=self._record,
        )
        self.space = SpaceWatch(
            store.layout.root,
            reserve_bytes=self.reserve.threshold_bytes,
            check_s=settings.space_check_s,
            window_s=settings.space_rate_window_s,
            warn_minutes=settings.space_warn_minutes,
            critical_minutes=settings.space_critical_minutes,
            recording_rooms=lambda: sorted(self.active),
            record=self._record,
        )

    # -- start-up and the supervised task -------------------------------------------------------------

    def load(self) -> None:
        """Read the sessions kept on disk: those still recording are resumed by :meth:`run`; a file that
        is not a session is an `error` entry (it stays where it is)."""
        self.files.prepare()
        sessions, problems = self.files.load()
        for name, why in problems:
            log.error("rooms: %s is not a room session: %s", printable(name), why)
            self.store.record(
                EntryType.ERROR,
                None,
                {"stage": "room", "file": printable(name)[:100], "reason": f"not a room session: {why}"},
            )
        self._remove_cut_short_work()
        sessions = self._checked_against_ledger(sessions)
        self._products_pending = self._without_products(sessions)
        for session in sessions:
            if session.state is not SessionState.RECORDING:
                if self._left_unfinished(session):
                    self._unfinished.append(session)  # sealed by run(): see _finish_stopped
                continue
            if self.settings.room_by_id(session.room) is None:
                reason = (
                    f"session {session.session} records in room {session.room}, which is no longer configured"
                )
                log.error("rooms: %s", reason)
                self.store.record(
                    EntryType.ERROR,
                    None,
                    {"stage": "room", "room_session": session.session, "reason": reason},
                )
                continue
            self.active[session.room] = session

    def _remove_cut_short_work(self) -> None:
        """Remove what an export or an attach cut short by a power cut (or a kill) left in the sessions'
        products directories: an export's staging copy and image (``export-<token>/``, ``.iso``) and a
        document being received (``document-<token>.part``). None of it is evidence (the staging holds
        copies of sealed items, the image is sealed nowhere, a part was never attached), and left there it
        would be counted by every later space check for ever. Nothing else is touched; an `error` entry
        (stage ``room export``) names each thing removed and its size."""
        base = self.store.layout.root / ROOMS_DIR / PRODUCTS_DIR
        try:
            session_dirs = [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            return
        for session_dir in sorted(session_dirs):
            try:
                found = sorted(p for p in session_dir.iterdir() if CUT_SHORT_WORK.fullmatch(p.name))
            except OSError as exc:
                log.warning("rooms: %s cannot be read: %s", session_dir, exc)
                continue
            for path in found:
                try:
                    info = path.lstat()
                    if stat.S_ISDIR(info.st_mode):
                        size = _tree_bytes(path)
                        shutil.rmtree(path)
                    elif stat.S_ISREG(info.st_mode):
                        size = info.st_size
                        path.unlink()
                    else:
                        continue  # a symlink or a device by that name: not what an export writes
                except OSError as exc:
                    log.warning("rooms: %s, left by a cut-short export or attach, cannot be removed: %s",
                                path, exc)
                    continue
                what = f"{session_dir.name}/{path.name}"
                reason = (f"{what} ({size} bytes), left by an export or attach the agent did not finish (a "
                          "power cut, a kill), removed: not evidence (a staging copy of sealed items, a disc "
                          "image never sealed, a document never attached)")
                log.warning("rooms: %s", reason)
                self.store.record(EntryType.ERROR, None, {
                    "stage": "room export", "room_session": session_dir.name[:64], "removed": path.name,
                    "bytes": size, "reason": reason})
            if found:
                with contextlib.suppress(OSError):  # only when nothing else is in it
                    session_dir.rmdir()

    def _checked_against_ledger(self, files: list[RoomSession]) -> list[RoomSession]:
        """The sessions to go on with: each session the ledger saw start and not stop, as the ledger
        says (its file's disagreements, or its missing file, an `error` entry each; the file is written
        again from the ledger); a file that says recording where the ledger says stopped is an `error`
        and is not resumed. A stopped session whose file is missing or unreadable, and whose stop left
        work (capture files, a completed manifest owed), is rebuilt from the ledger (an `error` entry) so
        that the work is done. A session whose stop sealed its signed manifest and was killed before
        session_stopped is finished as stopped (:meth:`_stop_cut_short`), never resumed. A recording file
        whose session_started never reached the ledger (the agent stopped between the two) is started
        now (:meth:`_start_cut_short`)."""
        on_ledger = sessions_on_ledger(self.store.ledger.entries_of_types(SESSION_TYPES))
        by_id = {session.session: session for session in files}
        result = [self._start_cut_short(s) if s.state is SessionState.RECORDING else s
                  for s in files if s.session not in on_ledger]
        for session_id, known in on_ledger.items():
            file = by_id.get(session_id)
            if known.stopped is None:
                manifest = stop_manifest_sealed(self.store.ledger.entries_of_types(
                    STOP_MANIFEST_TYPES, known.started.seq), session_id)
                if manifest is not None:
                    result.append(self._stop_cut_short(known, file, *manifest))
                    continue
            if known.stopped is not None:
                if file is None:
                    stopped = replace(known.rebuilt(None), state=SessionState.STOPPED,
                                      stopped_utc=known.stopped.time)
                    if self._left_unfinished(stopped):
                        # Its leftovers (and completed manifest) are sealed like any stopped session's.
                        self._file_error(session_id, "its file is missing or unreadable: rebuilt from the "
                                         "ledger to seal what its stop left unsealed")
                        if not self.files.path(session_id).exists():  # an unreadable one is kept as it is
                            self.files.save(stopped)
                        result.append(stopped)
                    continue
                if file.state is SessionState.RECORDING:
                    self._file_error(session_id, f"its file says recording, the ledger stopped it at entry "
                                     f"{known.stopped.seq}: not resumed")
                    file = replace(file, state=SessionState.STOPPED)
                    self.files.save(file)
                result.append(file)
                continue
            rebuilt = known.rebuilt(None if file is None else file.started_utc)
            for problem in known.problems:
                self._file_error(session_id, f"the ledger's record of it: {problem}")
            if file is None:
                self._file_error(session_id, "its file is missing: resumed as the ledger records it")
            elif said := disagreements(file, rebuilt):
                self._file_error(session_id, "its file disagrees with the ledger, whose values are used: "
                                 + "; ".join(said))
            else:
                result.append(file)
                continue
            self.files.save(rebuilt)
            result.append(rebuilt)
        return result

    def _stop_cut_short(
        self, known: LedgerSession, file: RoomSession | None, acquired: LedgerEntry, sealed: LedgerEntry
    ) -> RoomSession:
        """A stop killed after it sealed the session's signed manifest, before session_stopped: the
        operator stopped the session and the signed record says so, so it is finished as stopped (its
        session_stopped names that manifest and says it was completed after a restart), never resumed
        (the cameras would record the empty room, and a second manifest contradict the first)."""
        session_id = known.started.data.get("room_session")
        rebuilt = known.rebuilt(None if file is None else file.started_utc)
        stopped = replace(file if file is not None and not disagreements(file, rebuilt) else rebuilt,
                          state=SessionState.STOPPED, stopped_utc=acquired.time)
        note = (f"completed after a restart: the stop sealed its signed manifest (item {acquired.item}, "
                f"sealed at entry {sealed.seq}) and the agent ended before this entry; the session was "
                "not resumed")
        log.error("rooms: room session %s: %s", session_id, note)
        self.store.record(EntryType.SESSION_STOPPED, None, {
            "room_session": stopped.session, "room": stopped.room, "kind": "room", "by": "station",
            "manifest_item": acquired.item, "manifest_sha256": acquired.data.get("sha256"),
            "completed_after_restart": True, "note": note,
        })
        self.files.save(stopped)
        return stopped

    def _start_cut_short(self, session: RoomSession) -> RoomSession:
        """A recording session's file whose session_started never reached the ledger (the agent stopped
        between writing the file and the entry): an `error` saying so, then session_started now from the
        file's facts (``recovered`` true, the file's start), so that its case and persons are on the
        ledger before anything of it is recorded; it is then resumed (a gap from its start)."""
        self._file_error(session.session, "its file was written but its session_started never reached the "
                         "ledger (the agent stopped between the two): started now from its file "
                         "(recovered), resumed with a gap from its start")
        entry = self.store.record(EntryType.SESSION_STARTED, None, {
            "kind": "room", **session.facts(), "by": session.started_by, "recovered": True,
            "started_utc": session.started_utc,
        })
        started = replace(session, started_seq=entry.seq)
        self.files.save(started)
        return started

    def _left_unfinished(self, session: RoomSession) -> bool:
        """Whether a stopped session's stop left work. Its capture directory goes only as the last step
        of finishing it (after the completed manifest), so its presence says so without a look at the
        ledger for every session ever stopped; what is owed is then read from the ledger."""
        return (self.files.capture_dir / session.session).is_dir()

    async def _finish_stopped(self, session: RoomSession) -> None:
        """Seal what the stop of `session` left in its capture directory (its store was at its reserve:
        segments and the signed manifest): the segments, then the stop's manifest as it is (its hash is
        in session_stopped), then, when segments were sealed after that manifest was signed, a completed
        manifest (role ``session-manifest-completed``) listing every segment the ledger sealed for it.
        What still cannot be sealed stays for the next start."""
        base = self.files.capture_dir / session.session
        config = self.settings.room_by_id(session.room)
        names = {} if config is None else dict(room_outputs(config))
        late = 0
        already = sealed_on_ledger(self.store.ledger, session)
        try:
            for source_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
                sealer = SegmentSealer(self.pipeline, session, source=source_dir.name,
                                       source_name=names.get(source_dir.name, ""), station_id=self.station_id,
                                       clock_synchronised=self.clock_synchronised(),
                                       derived=derived_of(config, source_dir.name))
                for run_dir in sorted(p for p in source_dir.iterdir() if p.is_dir() and not p.is_symlink()):
                    for segment in await asyncio.to_thread(leftover_segments, run_dir, already,
                                                           source_dir.name):
                        if await sealer.seal(segment) is not None:
                            late += 1
            stopped_entry = next((e for e in self.store.ledger.entries_of_types(
                [EntryType.SESSION_STOPPED], session.started_seq or 1)
                if e.data.get("room_session") == session.session), None)
            stopped_by = "" if stopped_entry is None else str(stopped_entry.data.get("by", ""))
            manifest_path = base / MANIFEST_NAME
            if manifest_path.is_file():  # the stop's own, never sealed (its hash is in session_stopped)
                item = await seal_session_file(self.pipeline, manifest_path, session=session,
                                               role="session-manifest", station_id=self.station_id,
                                               clock_synchronised=self.clock_synchronised())
                if item is None:
                    return
                manifest_path.unlink(missing_ok=True)
            # Owed by the ledger, not by what this start sealed: a completion cut short (a crash or a full
            # disk between its steps) sealed the segments and never the manifest listing them.
            owed = completed_manifest_owed(self.store.ledger.entries_of_types(
                COMPLETION_TYPES, session.started_seq or 1), session.session)
            if owed:
                entries = list(self.store.ledger.entries(session.started_seq or 1))
                sources = [] if config is None else room_outputs(config)
                completed = sign_manifest(session_manifest(session, entries, station_id=self.station_id,
                                                           stopped_by=stopped_by, sources=sources),
                                          self.store.key)
                path = base / COMPLETED_MANIFEST_NAME
                await asyncio.to_thread(make_dirs_durable, base)
                await asyncio.to_thread(write_atomic, path, canonical_json(completed))
                item = await seal_session_file(self.pipeline, path, session=session,
                                               role=COMPLETED_MANIFEST_ROLE, station_id=self.station_id,
                                               clock_synchronised=self.clock_synchronised())
                if item is None:
                    return
                path.unlink(missing_ok=True)
            left = await asyncio.to_thread(self.files.clear_capture, session.session)
            log.info("room session %s: %d segment(s) its stop left unsealed sealed now%s", session.session,
                     late, f"; still unsealed: {', '.join(left[:5])}" if left else "")
            # The stop made its joins and statement from what it had sealed, or none at all (its manifest
            # unsealed): made again from the newest manifest, so that no segment sealed since is left off
            # the joined file and the disc (review 28). Owed by the ledger: a crash meanwhile is caught up
            # at the next start (_without_products).
            owed_from = self.owed.refresh().get(session.session)
            if owed_from is not None:
                await self._products_left(session, owed_from)
        except OSError as exc:
            log.error("room session %s: what its stop left unsealed cannot be sealed yet: %s",
                      session.session, exc)

    def _without_products(self, sessions: list[RoomSession]) -> list[tuple[RoomSession, LedgerEntry]]:
        """The stopped sessions whose newest sealed manifest has no `room_products` made from it (a stop
        cut short during its products, a manifest or completed manifest sealed at a later start: see
        :func:`products_owed`), with that manifest's `acquired` entry. Those whose stop left work are
        left to :meth:`_finish_stopped`, which makes their products once that work is done."""
        owed = self.owed.refresh()  # the entries since the index was last saved, not the whole ledger
        return [(s, owed[s.session]) for s in sessions
                if s.session in owed and s.state is SessionState.STOPPED and not self._left_unfinished(s)]

    def _file_error(self, session: str, why: str) -> None:
        reason = f"room session {session}: {why}"
        log.error("rooms: %s", printable(reason))
        self.store.record(EntryType.ERROR, None,
                          {"stage": "room", "room_session": session, "reason": printable(reason)[:1000]})

    async def run(self) -> None:
        """Record every active session until cancelled (the agent stops): then interrupt them."""
        self._running = True
        self.finishing = finishing = [
            asyncio.create_task(self._finish_stopped(session), name=f"room-finish-{session.session}")
            for session in self._unfinished
        ]
        self._unfinished = []
        finishing += [asyncio.create_task(self._products_left(session, entry),
                                          name=f"room-products-{session.session}")
                      for session, entry in self._products_pending]
        self._products_pending = []
        try:
            for session in list(self.active.values()):
                if session.room not in self._tasks:
                    self._launch(session, resumed=True)
            await asyncio.Event().wait()
        finally:
            for task in finishing:
                task.cancel()
            await asyncio.gather(*finishing, return_exceptions=True)
            self._running = False
            for recording in self._recordings.values():
                recording.interrupt(STOPPING_REASON)
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            self._recordings.clear()

    def _launch(self, session: RoomSession, *, resumed: bool = False) -> None:
        room = self._room(session.room)
        recording = SessionRecording(
            session,
            room,
            self.settings,
            self.pipeline,
            self.files,
            station_id=self.station_id,
            clock_synchronised=self.clock_synchronised,
            resumed_from_ns=self._last_segment_ends(session) if resumed else None,
            live=self.live,
            reserve=self.reserve,
        )
        self._recordings[session.room] = recording
        if session.room in self.overlay_lines:
            recording.set_overlay_line(self.overlay_lines[session.room])
        self._tasks[session.room] = asyncio.create_task(recording.run(), name=f"room-{session.room}")

    def _last_segment_ends(self, session: RoomSession) -> dict[str, int]:
        """Per source, the end of its last sealed segment (the session's start when it has none)."""
        start = _ns_from_iso(session.started_utc)
        ends = {source: start for source, _ in room_outputs(self._room(session.room))}
        for entry in self.store.ledger.entries(session.started_seq or 1):
            if entry.type == EntryType.SEGMENT_SEALED and entry.data.get("room_session") == session.session:
                source = str(entry.data.get("source"))
                ends[source] = max(ends.get(source, start), _ns_from_iso(str(entry.data.get("end_utc"))))
        return ends

    # -- requests ------------------------------------------------------------------------------------

    async def start(self, room: str, fields: Mapping[str, Any], *, by: str) -> RoomSession:
        async with self._lock(room):
            config = self.settings.room_by_id(room)
            if config is None:
                known = ", ".join(r.id for r in self.settings.room) or "none"
                await self._refuse(
                    "start", room, by, f"unknown room {room!r} (rooms of this station: {known})", 404
                )
            current = self.active.get(room)
            if current is not None:
                await self._refuse(
                    "start",
                    room,
                    by,
                    f"room {room} is already recording session {current.session} "
                    f"(case {current.case_number}, started {current.started_utc}): stop it first",
                    409,
                )
            # What exports, docking copies and attached documents in flight passed their own checks for and
            # have yet to write (the store's one booking ledger, edge.ingest.kept_space): a start keeps it
            # too, or both take the same bytes (review 29, rev11e). Read before the free space: a booking
            # written meanwhile is in the free figure then, so it is never missed, at worst counted twice.
            # A GB/T 28181 download's booking is not counted: rooms come first, its guard gives way and cuts
            # the download (review revgb).
            booked = self.pipeline.kept_space.booked(excluding=DOWNLOAD_BOOKING)
            try:
                free = await asyncio.to_thread(free_bytes, self.store.layout.root)
            except OSError as exc:  # unknown is not enough (edge.rooms.reserve: failing safe)
                await self._refuse("start", room, by, f"the store's free space cannot be read "
                                   f"({exc.strerror or exc}): no session starts until it can be", 507)
            # The rooms recording already record into the same free space, each on the expected length it
            # was started with: a start keeps theirs too, one start_min_free_bytes a room (review 28).
            recording = sorted(self.active)
            # The recording margin above the reserve too: under it the recording reserve stops sources
            # (edge.rooms.reserve), so a start there would begin with a gap (review 29).
            # One rule with exports and docking copies: the margin and a start's worth for each room, this
            # one counted as recording already (edge.rooms.space.rooms_kept_free).
            needed = (self.pipeline.settings.min_free_bytes + self._rooms_kept_free([*recording, room]).bytes
                      + KeptSpace.total(booked))
            if free < needed:
                kept = (f" and one for each room recording: {', '.join(recording)}" if recording else "")
                if booked:
                    kept += f", and what is still to be written by {said_bookings(booked)}"
                await self._refuse(
                    "start",
                    room,
                    by,
                    f"the store's disk has {free / 2**30:.1f} GiB free; a session needs {needed / 2**30:.1f} "
                    f"GiB ([rooms] start_min_free_bytes{kept}, the offload reserve and [rooms] "
                    "record_margin_bytes): free space first",
                    507,
                )
            try:
                session = new_session(
                    room=room,
                    room_name=config.name,
                    address=config.address,
                    fields=fields,
                    started_utc=station_time_now(),
                    started_by=by,
                )
            except SessionError as exc:
                await self._refuse("start", room, by, str(exc), 400)
            # The file first: a crash before the ledger entry leaves a session the next start records as
            # started (and resumes); never a started session without its file.
            await asyncio.to_thread(self.files.save, session)
            entry = await self._record(
                EntryType.SESSION_STARTED, {"kind": "room", **session.facts(), "by": by}
            )
            session = replace(session, started_seq=entry.seq)
            await asyncio.to_thread(self.files.save, session)
            self.active[room] = session
            log.info(
                "room %s: session %s started by %s (case %s)",
                room,
                session.session,
                printable(by),
                printable(session.case_number),
            )
            if self._running:
                self._launch(session)
            return session

    async def mark(self, room: str, note: object, *, by: str) -> Mark:
        async with self._lock(room):
            session = await self._active(room, "mark", by)
            try:
                check_mark_room(session)
                text = check_text("note", note, MAX_NOTE)
            except SessionError as exc:
                await self._refuse("mark", room, by, str(exc), 400)
            entry = await self._record(
                EntryType.MARK, {"room_session": session.session, "room": room, "note": text, "by": by}
            )
            mark = Mark(entry.time, text, by, entry.seq)
            await self._keep(replace(session, marks=(*session.marks, mark)))
            return mark

    async def change(self, room: str, changes: Mapping[str, Any], *, by: str) -> dict[str, Any]:
        async with self._lock(room):
            session = await self._active(room, "change", by)
            try:
                changed, diff = apply_change(session, changes)
            except SessionError as exc:
                await self._refuse("change", room, by, str(exc), 400)
            entry = await self._record(
                EntryType.SESSION_CHANGED,
                {"room_session": session.session, "room": room, "changes": diff, "by": by},
            )
            await self._keep(changed)
            return {"seq": entry.seq, "changes": diff}

    async def stop(self, room: str, *, by: str) -> dict[str, Any]:
        async with self._lock(room):
            session = await self._active(room, "stop", by)
            task = self._tasks.pop(room, None)
            recording = self._recordings.pop(room, None)
            if recording is not None and task is not None:
                recording.stop()
                await task  # every source's last segment closed and sealed, its gaps closed
            stopped = replace(session, state=SessionState.STOPPED, stopped_utc=station_time_now())
            entries = list(self.store.ledger.entries(session.started_seq or 1))
            room_config = self._room(room)
            manifest = sign_manifest(
                session_manifest(
                    stopped,
                    entries,
                    station_id=self.station_id,
                    stopped_by=by,
                    sources=room_outputs(room_config),
                ),
                self.store.key,
            )
            data = canonical_json(manifest)
            directory = self.files.capture_dir / session.session
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / MANIFEST_NAME
            await asyncio.to_thread(write_atomic, path, data)
            item = await seal_session_file(
                self.pipeline,
                path,
                session=stopped,
                role="session-manifest",
                station_id=self.station_id,
                clock_synchronised=self.clock_synchronised(),
            )
            if item is not None:
                path.unlink(missing_ok=True)
            segments = sum(len(s["segments"]) for s in manifest["sources"])
            summary = {
                "room_session": session.session,
                "room": room,
                "kind": "room",
                "by": by,
                "manifest_item": item,
                "manifest_sha256": sha256_hex(data),
                "segments": segments,
                "gaps": len(manifest["gaps"]),
                "marks": len(manifest["marks"]),
                # Made next (a joined file per source, the statement): `room_products` says when they are.
                # Without a sealed manifest (the store at its reserve) there are none.
                "products": PRODUCTS_TO_FOLLOW if item is not None else "none: the manifest is not sealed",
            }
            entry = await self._record(EntryType.SESSION_STOPPED, summary)
            await asyncio.to_thread(self.files.save, stopped)
            del self.active[room]
            left = await asyncio.to_thread(self.files.clear_capture, session.session)
            if left:
                log.error(
                    "room %s: session %s: %d capture file(s) not sealed, kept: %s",
                    room,
                    session.session,
                    len(left),
                    ", ".join(left[:5]),
                )
            log.info(
                "room %s: session %s stopped by %s: %d segments, %d gaps",
                room,
                session.session,
                printable(by),
                segments,
                len(manifest["gaps"]),
            )
        # Outside the room's lock: the session is stopped on the ledger, the room may start its next one
        # while the joins run.
        made = Products()
        if item is not None:
            made = await self._make_products(stopped, manifest, item, sha256_hex(data))
        return {**summary, **made.summary(), "seq": entry.seq, "stopped_utc": stopped.stopped_utc}

    async def _make_products(self, session: RoomSession, manifest: Mapping[str, Any], manifest_item: str,
                             manifest_sha256: str) -> Products:
        """The stopped session's joined files and statement, then `room_products` naming them."""
        products = await make_products(
            self.pipeline, session, manifest, manifest_item=manifest_item, manifest_sha256=manifest_sha256,
            ffmpeg=self.settings.ffmpeg, ffprobe=self.settings.ffprobe, station_id=self.station_id,
            clock_synchronised=self.clock_synchronised())
        await self._record(EntryType.ROOM_PRODUCTS, {
            "room_session": session.session, "room": session.room, "manifest_item": manifest_item,
            "manifest_sha256": manifest_sha256, **products.summary()})
        self.owed.refresh()  # so that the next start reads the ledger from here on
        return products

    async def _products_left(self, session: RoomSession, manifest_acquired: LedgerEntry) -> None:
        """Make the products owed by a stopped session (:func:`products_owed`), from its newest sealed
        manifest (read back, checked against the hash of its `acquired` entry)."""
        item, expected = manifest_acquired.item, manifest_acquired.data.get("sha256")
        record = None if item is None else self.pipeline.repository.item(item)
        try:
            if (manifest_acquired.type != EntryType.ACQUIRED
                    or manifest_acquired.data.get("room_session") != session.session
                    or manifest_acquired.data.get("role") not in MANIFEST_ROLES):
                raise ValueError(f"item {item} is not one of its manifests")
            if record is None or record.path is None or record.sha256 != expected:
                raise ValueError(f"its sealed manifest (item {item}) is not on this station as it was sealed")
            if record.size > MAX_SESSION_MANIFEST_BYTES:
                raise ValueError(f"its sealed manifest (item {item}) is {record.size} bytes, more than a "
                                 f"session manifest can be ({MAX_SESSION_MANIFEST_BYTES})")
            data = await asyncio.to_thread(_read_prefix, self.store.layout.root / record.path, record.size)
            if sha256_hex(data) != expected:
                raise ValueError(f"its sealed manifest (item {item}) no longer gives the hash it was sealed "
                                 "with")
            manifest = json.loads(data)
        except (OSError, ValueError) as exc:
            why = f"its products cannot be made: {exc}"
            self.products_problems[session.session] = why
            if self.owed.reported.get(session.session) == item:
                # On the ledger once already (an earlier start): logged, not recorded at every start.
                log.error("rooms: room session %s: %s (recorded before)", session.session, printable(why))
                return
            self._file_error(session.session, why)
            if item is not None:
                self.owed.mark_reported(session.session, item)
            return
        self.products_problems.pop(session.session, None)
        assert isinstance(item, str) and isinstance(expected, str)
        log.info("room session %s: making its products from manifest %s", session.session, item)
        await self._make_products(session, manifest, item, expected)

    def status(self) -> dict[str, Any]:
        """Every room with its session (case, persons, marks) and each source: for operators (the local
        API's room routes)."""
        rooms = []
        for config in self.settings.room:
            session = self.active.get(config.id)
            recording = self._recordings.get(config.id)
            rooms.append(
                {
                    "room": config.id,
                    "name": config.name,
                    "address": config.address,
                    "session": None if session is None else session.to_json(),
                    "sources": [] if recording is None else recording.status(),
                    **({"hardware": self.hardware_status[config.id]()} if config.id in self.hardware_status
                       else {}),
                }
            )
        return {"rooms": rooms, "segment_time_s": self.settings.segment_time_s, "space": self.space.status(),
                "reserve": self.reserve.status(),
                # Stopped sessions whose products could not be made at this start (their `error` entry is
                # on the ledger once; `edge verify` names them too).
                "products_problems": [{"room_session": session, "problem": why}
                                      for session, why in sorted(self.products_problems.items())]}

    def board_status(self) -> dict[str, Any]:
        """What the status board (and so the dock screen's unauthenticated kiosk channel) may show: whether
        each room records and how its sources do, never the case, the persons present or the marks."""
        shown = (
            "source",
            "recording",
            "segments_sealed",
            "segments_failed",
            "last_segment_end_utc",
            "last_seal_latency_s",
        )
        rooms = []
        for config in self.settings.room:
            session = self.active.get(config.id)
            recording = self._recordings.get(config.id)
            sources = [] if recording is None else recording.status()
            rooms.append(
                {
                    "room": config.id,
                    "name": config.name,
                    "recording": session is not None,
                    "started_utc": None if session is None else session.started_utc,
                    "sources": [
                        {**{key: source[key] for key in shown}, "gap": source["gap"] is not None}
                        for source in sources
                    ],
                }
            )
        space = self.space.status()
        shown_space = None if space is None else {k: space[k] for k in ("level", "minutes_left")}
        # A count only: the board is shown to anyone at the station.
        return {"rooms": rooms, "space": shown_space, "products_problems": len(self.products_problems)}

    # -- documents and discs (edge.rooms.documents, edge.rooms.export) --------------------------------

    async def attach(self, session_id: str, chunks: AsyncIterable[bytes], *, kind: object, name: object,
                     by: str, expected_bytes: int | None = None) -> dict[str, Any]:
        """Attach a document (PDF, JPEG, PNG by content) to a session, recording or stopped; refused (507)
        when the store's disk has no room for it beside what the rooms recording hold (it can wait: a
        stopped session takes documents). `expected_bytes`: its size as the request says it."""
        session = await self._known_session(session_id, "attach", by)
        try:
            async with self._attach_lock:  # one at a time: each counts what the ones before it took
                return await attach_document(
                    self.pipeline, session, chunks, kind=kind, name=name, by=by,
                    work_dir=products_dir(self.store.layout.root, session.session),
                    station_id=self.station_id, clock_synchronised=self.clock_synchronised(),
                    max_count=self.settings.max_documents_per_session,
                    max_total_bytes=self.settings.max_document_bytes_per_session,
                    expected_bytes=expected_bytes)
        except DocumentRefused as exc:
            await self._refuse("attach", session.room, by, f"session {session.session}: {exc}", exc.status)

    async def export(self, session_id: str, *, by: str, output_free_bytes: str | None = None) -> ExportedDisc:
        """The disc image of a stopped session (the caller hands it on and removes it); refused when it
        would not fit above the store's reserve, or in `output_free_bytes` (the free bytes where the caller
        writes the image, as it said them: a decimal)."""
        session = await self._known_session(session_id, "export", by)
        output_free: int | None = None
        if output_free_bytes is not None:
            if not _DECIMAL.fullmatch(output_free_bytes):
                await self._refuse("export", session.room, by, (
                    f"session {session.session}: output_free_bytes must be a non-negative decimal of at most "
                    f"19 digits, not {printable(output_free_bytes)[:32]!r}"), 400)
            output_free = int(output_free_bytes)
        # A room recording was started on start_min_free_bytes beyond the reserve (its expected length:
        # its segments are never dropped); an export staging its copy and image there would leave the
        # session to run into the reserve, its segments refused by the pipeline (review 28). So while rooms
        # record, an export keeps their room too: one start's worth for each (as the start counts them).
        # ... and the recording margin, under which the recording reserve stops their sources: the rule a
        # docking copy and a GB/T 28181 download keep too (edge.rooms.space.rooms_kept_free).
        kept = self._rooms_kept_free(sorted(self.active))
        reserve = self.pipeline.settings.min_free_bytes + kept.bytes
        reserve_what = f"the store's reserve and {kept.what}" if kept.members else "the store's reserve"
        try:
            return await export_session(
                self.pipeline, session.session, case_number=session.case_number, station_id=self.station_id,
                by=by, work_dir=products_dir(self.store.layout.root, session.session),
                from_seq=session.started_seq or 1, reserve_bytes=reserve, reserve_what=reserve_what,
                output_free_bytes=output_free)
        except ExportRefused as exc:  # its `refused` entry is written
            raise RoomRefused(str(exc), exc.status) from None

    async def _known_session(self, session_id: str, action: str, by: str) -> RoomSession:
        try:
            wanted = str(uuid.UUID(session_id))
        except ValueError:
            await self._refuse(action, "", by, f"{printable(session_id)[:64]!r} is not a session id", 400)
        for session in self.active.values():
            if session.session == wanted:
                return session
        # Not recording here: as the ledger has it. A stopped session's file is checked at no start, and an
        # export reads its entries from the session's started_seq and shows its case number; an attach seals
        # its case block: from an edited file a disc would leave out what was attached and name another case.
        files, _ = await asyncio.to_thread(self.files.load)
        on_ledger = self._session_on_ledger(wanted, next((s for s in files if s.session == wanted), None))
        if on_ledger is not None:
            return on_ledger
        await self._refuse(action, "", by, f"no session {wanted} on this station's ledger", 404)

    def _session_on_ledger(self, wanted: str, file: RoomSession | None) -> RoomSession | None:
        """Session `wanted` rebuilt from its ledger entries (stopped when it was), its file's start taken when
        plausible; a file that says otherwise is an `error` entry and is written again from the ledger."""
        started = next((e for e in self.store.ledger.entries_of_types([EntryType.SESSION_STARTED])
                        if e.data.get("room_session") == wanted and e.data.get("kind") == "room"), None)
        if started is None:
            return None
        known = sessions_on_ledger(self.store.ledger.entries_of_types(SESSION_TYPES, started.seq)).get(wanted)
        if known is None:
            return None
        rebuilt = known.rebuilt(None if file is None else file.started_utc)
        if known.stopped is not None:
            rebuilt = replace(rebuilt, state=SessionState.STOPPED, stopped_utc=known.stopped.time)
        if file is not None and (said := disagreements(file, rebuilt)):
            self._file_error(wanted, "its file disagrees with the ledger, whose values are used: "
                             + "; ".join(said))
            if known.stopped is not None:  # a recording one is the start's to check and write again
                self.files.save(rebuilt)
        return rebuilt

    def set_overlay_line(self, room: str, text: str) -> None:
        """The extra line of `room`'s composite overlay from now on (a room panel's temperature and humidity;
        "" removes it), also for its next sessions: the hook of whatever reads the room's panel.
        KeyError for a room not configured; OverlayLineError when `text` is not one short printable line."""
        self._room(room)
        line = check_extra_line(text)
        self.overlay_lines[room] = line
        recording = self._recordings.get(room)
        if recording is not None:
            recording.set_overlay_line(line)

    def recording(self, room: str) -> SessionRecording | None:
        return self._recordings.get(room)

    # -- helpers -------------------------------------------------------------------------------------

    def _rooms_kept_free(self, recording: Sequence[str]) -> KeptFree:
        return rooms_kept_free(recording, start_min_free_bytes=self.settings.start_min_free_bytes,
                               record_margin_bytes=self.settings.record_margin_bytes)

    def _lock(self, room: str) -> asyncio.Lock:
        # Room ids from requests are untrusted: locks only for configured rooms, one shared for the rest.
        key = room if self.settings.room_by_id(room) is not None else ""
        return self._locks.setdefault(key, asyncio.Lock())

    def _room(self, room: str) -> RoomConfig:
        config = self.settings.room_by_id(room)
        if config is None:
            raise KeyError(room)
        return config

    async def _active(self, room: str, action: str, by: str) -> RoomSession:
        session = self.active.get(room)
        if session is None:
            if self.settings.room_by_id(room) is None:
                await self._refuse(action, room, by, f"unknown room {room!r}", 404)
            await self._refuse(action, room, by, f"no session is recording in room {room}", 404)
        return session

    async def _keep(self, session: RoomSession) -> None:
        await asyncio.to_thread(self.files.save, session)
        self.active[session.room] = session
        recording = self._recordings.get(session.room)
        if recording is not None:
            recording.session = session  # segments sealed from now on carry the new case block

    async def _record(self, type_: str, data: dict[str, Any]) -> LedgerEntry:
        repository = self.pipeline.repository
        return await self.pipeline.commit(lambda: repository.entry(type_, None, data))

    async def _refuse(self, action: str, room: str, by: str, reason: str, status: int) -> NoReturn:
        shown = printable(room)[:64]
        log.warning("room %s: %s refused (%s): %s", shown, action, printable(by), printable(reason))
        await self._record(
            EntryType.REFUSED,
            {"stage": "room", "action": action, "room": shown, "by": by, "reason": printable(reason)[:500]},
        )
        raise RoomRefused(reason, status)


def _tree_bytes(root: Path) -> int:
    """The bytes of the regular files under `root` (symlinks not followed)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(info.st_mode):
                    total += info.st_size
    return total


def _read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as reader:
        return reader.read(size)


def _ns_from_iso(text: str) -> int:
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return time.time_ns()
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
