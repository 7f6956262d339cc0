"""The check-out desk (领用) and check-in (归还): the station hands out a recorder and takes it back.

Check-out, by card or by 警号 + PIN:

1. the officer: a card the registry knows, or a 警号 whose PIN matches (argon2id; after `pin_failures_max`
   wrong PINs in a row the 警号 is locked for `pin_lockout_s`, each further lockout before a right PIN twice
   as long, up to a day); the officer active, not already holding a
   recorder;
2. a ready recorder (:func:`why_not_ready`): docked in control mode, allowed and logged in, no open
   assignment, its latest docking at this station finished `done` (every file sealed, wiped where the
   policy says so) and the agent has it back in control mode after that docking (the bench's `idle`),
   battery at least `min_battery_percent`; the fullest battery first;
3. the agency's settings (`policy.settings`: resolution, pre/post-record, minutes per file) and the
   officer's identity written to it (SET_SETTINGS, WriteZFYInfo) and read back: what the recorder reports
   afterwards must be exactly what was written, else that recorder is not issued (an `error` entry
   names it) and the next ready one is tried; its clock set (校时) only when the station clock is
   trusted;
4. the assignment opened with its `assigned` ledger entry in one transaction, and the bay lit.

Every refusal is a `refused` ledger entry (`"what": "check-out"`, a reason code, the detail) and a
:class:`CheckoutRefused` whose `screen_text` the dock screen shows. Never a PIN anywhere.

Check-in (:func:`check_in_after_docking`): a docking closes the recorder's open assignment with a `returned`
entry only when it ended `done` (or with every file sealed, some waiting for the central before they are
erased) and it was the recorder itself (its control protocol, on the USB serial the
assignment was issued to). A docking that ended otherwise (pulled mid-copy, failed) leaves the assignment
and its overdue alert open, with a `refused` entry (`"what": "check-in"`) saying the recorder was seen and
left; a volume that only claims the recorder (its PARAM.INI names it) is a `refused` entry too. The recorders
themselves are reached through a :class:`RecorderBench` (USB: :mod:`.usb_recorders`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from drivers.usb.protocol import RecorderInfo, RecorderProtocolError, RecorderSettings
from edge.custody.ledger import EntryType, LedgerEntry, station_time_now
from edge.equipment.assignments import Assignment, AssignmentBook, PinLockout
from edge.equipment.credentials import CredentialError, normalise_card_uid, verify_pin
from edge.equipment.officers import Officer, OfficerRegistry, OfficerStatus
from edge.equipment.overdue import close_overdue_alert, open_overdue_alert
from edge.ingest.store import SESSION_ORDER, StationStore

__all__ = [
    "CheckoutDesk",
    "CheckoutPolicy",
    "CheckoutRefused",
    "DockedRecorder",
    "IdentityWriteError",
    "IdentityWritten",
    "RecorderBench",
    "RefusalReason",
    "check_in_after_docking",
    "last_docking",
    "return_recorder",
    "why_not_ready",
]

log = logging.getLogger(__name__)

# The outcome of a docking session that sealed every file and wiped per policy (edge.sources.usb.offload's
# OffloadOutcome.DONE; a literal here so that equipment does not import the USB source).
DOCKING_DONE = "done"
# Dockings that are a check-in: every file of the recorder is sealed here (some may wait for the central
# before they are erased from it, and then it is not issued until a later docking wipes them).
# A recorder's own docking that ended `partial` is a return too, its unread files named (at most this many).
DOCKING_PARTIAL = "partial"
MAX_UNREAD_NAMED = 100
CHECK_IN_OUTCOMES = frozenset({DOCKING_DONE, "awaiting-receipt", "awaiting-witness"})
# The identity source of a recorder that answered over its control protocol (edge.sources.usb.identity): the
# only docking that can be the recorder itself (its USB serial pinned by the allow-list at check-out).
CONTROL_IDENTITY = "usb-control"


class RefusalReason(StrEnum):
    UNKNOWN_CARD = "unknown_card"
    UNKNOWN_OFFICER = "unknown_officer"
    SUSPENDED = "suspended"
    NO_PIN = "no_pin"
    WRONG_PIN = "wrong_pin"
    PIN_LOCKED = "pin_locked"
    ALREADY_HOLDS = "already_holds"
    NO_RECORDER_READY = "no_recorder_ready"


# What the dock screen says, in the officer's language first.
SCREEN_TEXT: dict[RefusalReason, str] = {
    RefusalReason.UNKNOWN_CARD: "此卡未登记 · card not registered at this station",
    RefusalReason.UNKNOWN_OFFICER: "警号或密码错误 · wrong officer number or PIN",
    RefusalReason.SUSPENDED: "该警员已停用，请联系管理员 · officer suspended: see the administrator",
    RefusalReason.NO_PIN: "未设置密码，请刷卡 · no PIN set: use your card",
    RefusalReason.WRONG_PIN: "警号或密码错误 · wrong officer number or PIN",
    RefusalReason.PIN_LOCKED: "密码错误次数过多，已锁定 · too many wrong PINs: locked for now",
    RefusalReason.ALREADY_HOLDS: "已领用一台记录仪，请先归还 · you already hold a recorder: return it first",
    RefusalReason.NO_RECORDER_READY: "暂无可领用的记录仪 · no recorder is ready (charged, copied and wiped)",
}


# Refusals that would tell a registered 警号 from an unknown one: shown as a wrong PIN outside the ledger. A
# lockout too: only a 警号 with a PIN ever locks, so `pin_locked` would name the officers who have one.
_SHOWN_AS_WRONG_PIN = frozenset({RefusalReason.UNKNOWN_OFFICER, RefusalReason.NO_PIN,
                                 RefusalReason.PIN_LOCKED})


class CheckoutRefused(Exception):
    """A check-out that did not happen: the reason code, the screen text, the `refused` ledger entry."""

    def __init__(self, reason: RefusalReason, detail: str, entry: LedgerEntry) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.entry = entry

    @property
    def screen_text(self) -> str:
        """What the screen shows: the text of the public reason (the ledger keeps the true one)."""
        return SCREEN_TEXT[self.public_reason]

    @property
    def public_reason(self) -> RefusalReason:
        """The reason as the desk tells it outside the ledger (the API's answer, the kiosk's outcomes): an
        unknown 警号, a 警号 with no PIN set (card only: it can never be served a PIN check-out) and a locked
        one (only a 警号 with a PIN locks) are a wrong PIN there, so that no answer tells which 警号 exist.
        The lockout still holds: a locked 警号 is refused even its right PIN, and the ledger says so."""
        return RefusalReason.WRONG_PIN if self.reason in _SHOWN_AS_WRONG_PIN else self.reason


class IdentityWriteError(Exception):
    """The identity could not be written to a recorder, or it reads back different."""


@dataclass(frozen=True)
class DockedRecorder:
    """One recorder the bench found docked, as it reported itself after login (or why it could not)."""

    port: str
    usb_serial: str
    bay: int | None
    device_serial: str = ""
    battery_percent: int = 0
    file_count: int = 0
    claimed: RecorderInfo | None = None  # GetZFYInfo as the recorder answered it
    problem: str | None = None  # why it could not be inspected (not allowed, password, gone)


@dataclass(frozen=True)
class IdentityWritten:
    before: RecorderInfo
    read_back: RecorderInfo
    clock_set: bool
    settings_before: RecorderSettings | None = None  # None: no settings were pushed
    settings_read_back: RecorderSettings | None = None


class RecorderBench(Protocol):
    """The recorders docked at this station, reached through their control protocol."""

    async def docked(self) -> list[DockedRecorder]: ...

    async def write_identity(self, recorder: DockedRecorder, info: RecorderInfo, *, set_clock: bool,
                             settings: RecorderSettings | None = None) -> IdentityWritten: ...

    async def show_issued(self, recorder: DockedRecorder) -> None: ...


@dataclass(frozen=True)
class CheckoutPolicy:
    min_battery_percent: int = 80
    pin_failures_max: int = 5
    pin_lockout_s: float = 900.0
    settings: RecorderSettings | None = None  # the agency's recorder settings, pushed at check-out


def last_docking(conn: sqlite3.Connection, device_serial: str) -> tuple[str | None, str | None] | None:
    """(ended, outcome) of the station's latest docking session of a recorder, or None if it never docked.
    Latest in the order the station recorded them (the seq of their `session_started` entries, kept in
    `started_seq`), not by `started` (a wall clock stepped back would put a later docking first) nor by the
    rowid (VACUUM or a copy of the store renumbers it)."""
    row = conn.execute(f"SELECT ended, outcome FROM sessions WHERE device_serial = ? "
                       f"ORDER BY {SESSION_ORDER} LIMIT 1", (device_serial,)).fetchone()
    return None if row is None else (row[0], row[1])


def why_not_ready(recorder: DockedRecorder, policy: CheckoutPolicy, open_holder: Assignment | None,
                  docking: tuple[str | None, str | None] | None) -> str | None:
    """Why a docked recorder may not be issued now, or None when it is ready. Offloaded and wiped is the
    station's own record (its latest docking ended `done`: every file sealed, and wiped where the wipe
    policy says so), not the recorder's file count, which counts what the firmware counts."""
    if recorder.problem is not None:
        return recorder.problem
    if not recorder.usb_serial:
        # A check-in is its own docking on the USB serial it was issued on (`check_in_after_docking`): one
        # with none (allowed by [recorders] allow_unknown) would stay out with its officer for ever.
        return "no USB serial: it could never be checked in"
    if open_holder is not None:
        return f"still assigned to 警号 {open_holder.officer_no} (not checked in)"
    if docking is None:
        return "never offloaded at this station"
    ended, outcome = docking
    if ended is None:
        return "its docking (offload) is not finished"
    if outcome != DOCKING_DONE:
        return f"its last docking ended {outcome}: not offloaded and wiped"
    if recorder.battery_percent < policy.min_battery_percent:
        return f"battery {recorder.battery_percent}% < {policy.min_battery_percent}%"
    return None


def _info_dict(info: RecorderInfo | None) -> dict[str, str] | None:
    if info is None:
        return None
    return {"device_serial": info.device_serial, "officer_no": info.officer_no,
            "officer_name": info.officer_name, "unit_code": info.unit_code, "unit_name": info.unit_name}


def _settings_dict(settings: RecorderSettings | None) -> dict[str, int] | None:
    return None if settings is None else asdict(settings)


class CheckoutDesk:
    """Check-outs and check-ins of one station, one at a time (two officers at the screen and the reader
    never get the same recorder)."""

    def __init__(self, store: StationStore, bench: RecorderBench, policy: CheckoutPolicy, *,
                 clock_trusted: Callable[[], Awaitable[bool]]) -> None:
        self.store = store
        self.bench = bench
        self.policy = policy
        self._clock_trusted = clock_trusted
        self._lock = asyncio.Lock()
        OfficerRegistry.create_schema(store.conn)
        AssignmentBook.create_schema(store.conn)
        self.officers = OfficerRegistry(store.conn)
        self.book = AssignmentBook(store.conn)
        self.pins = PinLockout(store.conn, max_failures=policy.pin_failures_max,
                               lockout_s=policy.pin_lockout_s)

    # -- check-out --------------------------------------------------------------------------------------

    async def check_out_by_card(self, card_uid: str) -> Assignment:
        async with self._lock:
            try:
                uid = normalise_card_uid(card_uid)
            except CredentialError as exc:
                raise self._refuse(RefusalReason.UNKNOWN_CARD, str(exc), method="card") from None
            officer = self.officers.by_card(uid)
            if officer is None:
                raise self._refuse(RefusalReason.UNKNOWN_CARD, f"card {uid} is not in the officer registry",
                                   method="card", card_uid=uid)
            return await self._issue(officer, method="card")

    async def check_out_by_pin(self, officer_no: str, pin: str) -> Assignment:
        async with self._lock:
            officer = self.officers.get(officer_no) if officer_no.isascii() and officer_no.isdigit() else None
            # Verified even for an unknown 警号 (against a dummy hash) and a locked one (its answer
            # ignored): a refusal takes as long whichever it is.
            good = await asyncio.to_thread(verify_pin, officer.pin_hash if officer else None, pin)
            if officer is not None:
                locked = self.pins.locked_until(officer.officer_no, station_time_now())
                if locked is not None:
                    raise self._refuse(RefusalReason.PIN_LOCKED, f"PIN locked until {locked}",
                                       method="pin", officer_no=officer.officer_no)
            if officer is None:
                well_formed = officer_no.isascii() and len(officer_no) == 6 and officer_no.isdigit()
                typed = officer_no if well_formed else None  # what the ledger may quote of the input
                raise self._refuse(RefusalReason.UNKNOWN_OFFICER, "no such 警号 in the officer registry",
                                   method="pin", officer_no=typed)
            if officer.pin_hash is None:
                raise self._refuse(RefusalReason.NO_PIN, "the officer has no PIN set", method="pin",
                                   officer_no=officer.officer_no)
            if not good:
                with self.store.transaction():
                    failures, locked = self.pins.failed(officer.officer_no, station_time_now())
                    entry = self._refusal_entry(
                        RefusalReason.PIN_LOCKED if locked else RefusalReason.WRONG_PIN,
                        f"wrong PIN ({failures} in a row)" + (f"; locked until {locked}" if locked else ""),
                        method="pin", officer_no=officer.officer_no, failures=failures)
                reason = RefusalReason.PIN_LOCKED if locked else RefusalReason.WRONG_PIN
                raise CheckoutRefused(reason, str(entry.data["detail"]), entry)
            with self.store.transaction():
                self.pins.succeeded(officer.officer_no)
            return await self._issue(officer, method="pin")

    async def _issue(self, officer: Officer, *, method: str) -> Assignment:
        if officer.status is not OfficerStatus.ACTIVE:
            raise self._refuse(RefusalReason.SUSPENDED, f"officer {officer.officer_no} is {officer.status}",
                               method=method, officer_no=officer.officer_no)
        held = self.book.open_for_officer(officer.officer_no)
        if held is not None:
            raise self._refuse(RefusalReason.ALREADY_HOLDS,
                               f"officer {officer.officer_no} holds recorder {held.device_serial} since "
                               f"{held.checked_out}", method=method, officer_no=officer.officer_no)
        try:
            docked = await self.bench.docked()
        except Exception as exc:  # a bench that cannot list its recorders is a refusal, not a crash
            raise self._refuse(RefusalReason.NO_RECORDER_READY, f"the recorders cannot be listed: {exc}",
                               method=method, officer_no=officer.officer_no) from exc
        not_ready: dict[str, str] = {}
        ready: list[DockedRecorder] = []
        for recorder in docked:
            holder = self.book.open_for_recorder(recorder.device_serial) if recorder.device_serial else None
            docking = last_docking(self.store.conn, recorder.device_serial)
            why = why_not_ready(recorder, self.policy, holder, docking)
            if why is None:
                ready.append(recorder)
            else:
                not_ready[recorder.device_serial or f"port {recorder.port}"] = why
        ready.sort(key=lambda r: (-r.battery_percent, r.bay if r.bay is not None else 1 << 30, r.port))
        set_clock = await self._clock_trusted()
        for recorder in ready:
            try:
                written = await self._write(recorder, officer, set_clock=set_clock)
            except IdentityWriteError as exc:
                not_ready[recorder.device_serial] = f"identity not written: {exc}"
                self.store.record(EntryType.ERROR, None, {
                    "what": "check-out", "device_serial": recorder.device_serial, "bay": recorder.bay,
                    "officer_no": officer.officer_no, "reason": f"identity not written: {exc}"})
                continue
            assignment = self._assign(officer, recorder, written, method=method)
            try:
                await self.bench.show_issued(recorder)
            except Exception as exc:  # the LED is a courtesy: the assignment stands without it
                log.warning("bay %s: could not light the issued recorder's LED: %s", recorder.bay, exc)
            return assignment
        detail = "; ".join(f"{serial}: {why}" for serial, why in sorted(not_ready.items()))
        raise self._refuse(RefusalReason.NO_RECORDER_READY, detail or "no recorder docked", method=method,
                           officer_no=officer.officer_no)

    async def _write(self, recorder: DockedRecorder, officer: Officer, *, set_clock: bool) -> IdentityWritten:
        try:
            wanted = RecorderInfo(device_serial=recorder.device_serial, officer_no=officer.officer_no,
                                  officer_name=officer.name, unit_code=officer.unit_code,
                                  unit_name=officer.unit_name)
        except RecorderProtocolError as exc:  # the registry's rules are the field widths: not expected
            raise IdentityWriteError(str(exc)) from None
        written = await self.bench.write_identity(recorder, wanted, set_clock=set_clock,
                                                  settings=self.policy.settings)
        if self.policy.settings is not None and written.settings_read_back != self.policy.settings:
            raise IdentityWriteError(f"the recorder reports settings {written.settings_read_back} after "
                                     f"{self.policy.settings} was written")
        if written.read_back != wanted:
            raise IdentityWriteError(
                f"the recorder reports {_info_dict(written.read_back)} after {_info_dict(wanted)} was "
                "written")
        return written

    def _assign(self, officer: Officer, recorder: DockedRecorder, written: IdentityWritten, *,
                method: str) -> Assignment:
        now = station_time_now()
        with self.store.transaction():
            assignment = self.book.open(
                officer_no=officer.officer_no, officer_name=officer.name, unit_code=officer.unit_code,
                unit_name=officer.unit_name, device_serial=recorder.device_serial,
                usb_serial=recorder.usb_serial, bay=recorder.bay, method=method, checked_out=now, seq=0)
            entry = self.store.ledger.append(EntryType.ASSIGNED, None, {
                "assignment": assignment.id, "officer_no": officer.officer_no, "officer_name": officer.name,
                "unit_code": officer.unit_code, "unit_name": officer.unit_name,
                "device_serial": recorder.device_serial, "usb_serial": recorder.usb_serial,
                "bay": recorder.bay, "method": method, "battery_percent": recorder.battery_percent,
                "identity_before": _info_dict(written.before),
                "identity_written": _info_dict(written.read_back),
                "clock_set": written.clock_set,
                "settings_before": _settings_dict(written.settings_before),
                "settings_written": _settings_dict(written.settings_read_back),
            }, time=now)
            self.store.conn.execute("UPDATE assignments SET checked_out_seq = ? WHERE id = ?",
                                    (entry.seq, assignment.id))
        log.info("recorder %s checked out to %s at bay %s (%s)", recorder.device_serial, officer.officer_no,
                 recorder.bay, method)
        found = self.book.open_for_recorder(recorder.device_serial)
        assert found is not None
        return found

    def _refusal_entry(self, reason: RefusalReason, detail: str, **facts: Any) -> LedgerEntry:
        """The `refused` entry, inside the caller's transaction."""
        data = {"what": "check-out", "reason": str(reason), "detail": detail,
                **{k: v for k, v in facts.items() if v is not None}}
        return self.store.ledger.append(EntryType.REFUSED, None, data)

    def _refuse(self, reason: RefusalReason, detail: str, **facts: Any) -> CheckoutRefused:
        with self.store.transaction():
            entry = self._refusal_entry(reason, detail, **facts)
        log.info("check-out refused (%s): %s", reason, detail)
        return CheckoutRefused(reason, detail, entry)

    # -- check-in ---------------------------------------------------------------------------------------

    def check_in(self, device_serial: str, *, bay: int | None) -> Assignment | None:
        """A recorder docked: close its open assignment (`returned`); None when it had none."""
        return return_recorder(self.store, device_serial, bay=bay)


def return_recorder(store: StationStore, device_serial: str, *, bay: int | None,
                    unread: Sequence[str] | None = None) -> Assignment | None:
    """Check-in (归还): close the recorder's open assignment with a `returned` entry, in one transaction;
    None when it had none (it was not checked out here, or already returned). An overdue alert of the
    assignment (edge.equipment.overdue) closes with it, and the entry says how late it came back."""
    AssignmentBook.create_schema(store.conn)
    book = AssignmentBook(store.conn)
    with store.transaction():
        open_assignment = book.open_for_recorder(device_serial)
        if open_assignment is None:
            return None
        now = station_time_now()
        data: dict[str, Any] = {
            "assignment": open_assignment.id, "officer_no": open_assignment.officer_no,
            "device_serial": device_serial, "bay": bay, "checked_out": open_assignment.checked_out,
        }
        if unread is not None:  # a `partial` docking: the files it could not read stay on the recorder
            data["outcome"] = DOCKING_PARTIAL
            data["unread"] = list(unread[:MAX_UNREAD_NAMED])
            data["unread_count"] = len(unread)
        alert = open_overdue_alert(store.conn, open_assignment.id)
        if alert is not None:  # it was overdue: the return closes the alert and says how late it came
            data["overdue"] = alert.on_return(now)
        entry = store.ledger.append(EntryType.RETURNED, None, data, time=now)
        returned = book.close(open_assignment.id, returned=now, bay=bay, seq=entry.seq)
        if alert is not None:
            close_overdue_alert(store.conn, alert.assignment, closed_at=now, seq=entry.seq)
    log.info("recorder %s returned by %s at bay %s", device_serial, returned.officer_no, bay)
    return returned


def _seen_leaving(conn: sqlite3.Connection, held: Assignment) -> bool:
    """Whether the ledger saw the recorder's USB device leave since its check-out (a bay's power cycle aside:
    the recorder stays in the bay).

    A USB serial is a claim, not an identity (a batch may share one), so a removal of it counts only where
    it is this recorder: one naming a device serial must name this one; else it must be at the bay the
    recorder was issued from. Issued with no bay on record (no bay map), the station cannot tell where it
    was, and any removal of its USB serial counts, as before."""
    row = conn.execute(
        "SELECT 1 FROM ledger WHERE seq > ? AND type = ? AND json_extract(data, '$.usb_serial') = ? "
        "AND coalesce(json_extract(data, '$.reason'), '') <> 'bay power cycle' "
        "AND CASE WHEN json_extract(data, '$.device_serial') IS NOT NULL "
        "THEN json_extract(data, '$.device_serial') = ? "
        "WHEN ? IS NULL THEN 1 ELSE json_extract(data, '$.bay') IS ? END LIMIT 1",
        (held.checked_out_seq, EntryType.DEVICE_REMOVED.value, held.usb_serial, held.device_serial,
         held.bay, held.bay)).fetchone()
    return row is not None


def check_in_after_docking(store: StationStore, *, device_serial: str, usb_serial: str, identity_source: str,
                           outcome: str, session: str, bay: int | None,
                           unread: Sequence[str] = (), found_at_start: bool = False) -> Assignment | None:
    """The check-in of a docking that has ended (after its `session_stopped`): close the recorder's open
    assignment when the docking was the recorder itself and sealed every file (`CHECK_IN_OUTCOMES`), or
    ended `partial` (the recorder is back: the `returned` entry names the `unread` files, which stay on it,
    never wiped; a recorder with unread files kept away would hold its officer and its alert for ever);
    otherwise leave it open with a `refused` entry that says why. None when no assignment was closed.

    `found_at_start`: the agent's first USB poll found the recorder docked. Issued and never taken, it would
    be "returned" by the first docking after an agent restart while the officer walks to the bay; so such a
    docking is a check-in only when the ledger saw the recorder leave since its check-out (taken and docked
    again while the agent was down is then the one return the station cannot tell, and waits for the next
    docking)."""
    AssignmentBook.create_schema(store.conn)
    held = AssignmentBook(store.conn).open_for_recorder(device_serial)
    if held is None:
        return None
    facts: dict[str, Any] = {"what": "check-in", "assignment": held.id, "officer_no": held.officer_no,
                             "device_serial": device_serial, "session": session, "bay": bay,
                             "outcome": outcome}
    if identity_source != CONTROL_IDENTITY or not usb_serial or usb_serial != held.usb_serial:
        said = f"a volume claims recorder {device_serial}" if identity_source != CONTROL_IDENTITY else \
            f"a recorder on USB serial {usb_serial or '(none)'} claims to be recorder {device_serial}"
        store.record(EntryType.REFUSED, None, {
            **facts, "identity_source": identity_source,
            "reason": f"{said}, which is out with 警号 {held.officer_no} (issued on USB serial "
                      f"{held.usb_serial}): not a check-in; the assignment stays open"})
        log.warning("recorder %s: a docking that is not the recorder itself claims it (out with %s)",
                    device_serial, held.officer_no)
        return None
    if found_at_start and not _seen_leaving(store.conn, held):
        store.record(EntryType.REFUSED, None, {
            **facts, "reason": f"recorder {device_serial} was in its bay when the agent started and was "
                               f"never seen leaving it since its check-out to 警号 {held.officer_no}: not a "
                               "check-in; the assignment stays open (its next docking after it leaves "
                               "returns it)"})
        log.warning("recorder %s docked at the agent's start, never seen leaving since its check-out: still "
                    "out with %s", device_serial, held.officer_no)
        return None
    if outcome == DOCKING_PARTIAL:
        log.warning("recorder %s returned with %d file(s) it could not read (left on it)", device_serial,
                    len(unread))
        return return_recorder(store, device_serial, bay=bay, unread=unread)
    if outcome not in CHECK_IN_OUTCOMES:
        store.record(EntryType.REFUSED, None, {
            **facts, "reason": f"recorder {device_serial} was docked and left (its docking ended {outcome}): "
                               f"not a check-in; still out with 警号 {held.officer_no}"})
        log.warning("recorder %s seen and left (docking %s): still out with %s", device_serial, outcome,
                    held.officer_no)
        return None
    return return_recorder(store, device_serial, bay=bay)
