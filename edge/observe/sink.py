"""What the lower layers tell the status board: a narrow, one-way publish interface.

The USB sessions and offload, the ingest pipeline and the uplink hold a :class:`StatusSink` and call
``publish`` with one of the frozen events below. They never import the board, its metrics or the local
API (tests/test_quality.py keeps it so): this module imports nothing of the project, and
:data:`NULL_SINK` is the default, so that code run without a board (``edge verify``, tests of one layer)
publishes into nothing.

The events carry codes (:class:`BayPhase`, :class:`ErrorClass`, :class:`DurationKind`), never words:
the words, in Chinese and English, live with the pages that show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class BayPhase(StrEnum):
    """What a bay shows: the states of one docking, in the order they usually come."""

    EMPTY = "empty"
    AUTHENTICATING = "authenticating"  # identity, allow-list, password, clock (校时)
    COPYING = "copying"  # files and bytes coming off the recorder
    VERIFYING = "verifying"  # every file copied; re-reads, seals, and the check before erasing
    AWAITING_RECEIPT = "awaiting_receipt"  # safe at the station; erased once the central receipts/witnesses
    DONE = "done"
    ERROR = "error"  # see the error class


class ErrorClass(StrEnum):
    """Why a docking ended in error, one code per thing the officer or an admin does differently."""

    NOT_ALLOWED = "not_allowed"  # not on the allow-list, or its USB serial is pinned by no entry
    WRONG_PASSWORD = "wrong_password"  # the recorder refused the station's password, or locked itself
    NO_PASSWORD = "no_password"  # the station has no recorder password configured
    NO_IDENTITY = "no_identity"  # a volume that does not say which recorder it is
    DISK_FULL = "disk_full"  # the station's store is full: nothing more taken, the recorder untouched
    # The rest of the store's disk is kept for the rooms recording (edge.ingest.kept_space): nothing more
    # taken, the recorder untouched; dock it again once they stopped.
    ROOMS_RECORDING = "rooms_recording"
    PULLED_EARLY = "pulled_early"  # removed (or its volume vanished) before the docking ended
    FILES_FAILED = "files_failed"  # some files could not be acquired; the rest are safe
    NO_VOLUME = "no_volume"  # switched to mass storage, but its volume never appeared
    DEVICE_ERROR = "device_error"  # the recorder answered the control protocol wrongly
    FAILED = "failed"  # an unexpected error: in the ledger and the log


# Error classes that are refusals (the station would not serve the recorder), counted apart from errors.
REFUSAL_CLASSES = frozenset(
    {ErrorClass.NOT_ALLOWED, ErrorClass.WRONG_PASSWORD, ErrorClass.NO_PASSWORD, ErrorClass.NO_IDENTITY}
)


class RefusalClass(StrEnum):
    """Refusals that are not a bay's: entries of a volume, and volumes that are not volumes."""

    FILE = "file"  # a file or directory entry of a recorder volume refused (name, type, size)
    VOLUME = "volume"  # a symlink posing as a volume under the mount root


class DurationKind(StrEnum):
    COPY = "copy"  # one file off the recorder, hashed and fsynced
    VERIFY = "verify"  # one file's media facts, seal and re-reads
    UPLOAD = "upload"  # one item's content sent to the central (tus), until it answered
    RECEIPT = "receipt"  # from an item's `sealed` entry to its verified central receipt


@dataclass(frozen=True)
class Officer:
    name: str
    badge: str  # 警号


@dataclass(frozen=True)
class Device:
    serial: str
    model: str = ""
    battery_pct: int | None = None


@dataclass(frozen=True)
class BayChanged:
    """A docking moved on. ``bay`` is the configured bay number, None when the station could not tell
    which bay the recorder sits in; ``device_serial`` is what the recorder says it is (or its USB serial
    before it was asked). Facts left None are kept from the bay's earlier events."""

    bay: int | None
    device_serial: str | None
    phase: BayPhase
    error_class: ErrorClass | None = None
    officer: Officer | None = None
    device: Device | None = None


@dataclass(frozen=True)
class BayVacated:
    """The recorder left its bay (unplugged, volume unmounted): the bay shows empty again, unless it
    shows an error the officer must still read (a recorder pulled early)."""

    bay: int | None
    device_serial: str | None


@dataclass(frozen=True)
class BayBouncing:
    """The bay board reports the bay's presence changing too often to act on (a worn switch, a faulty
    or hostile board: `edge.sources.usb.bay_presence`), or no longer (``bouncing`` False)."""

    bay: int
    bouncing: bool


class UsbSerialProblem(StrEnum):
    """What is wrong with the USB serial a docked recorder claims (it is served by its bay all the same)."""

    SHARED = "shared"  # another docked device claims the same serial (identical factory serials, a copy)
    MISSING = "missing"  # no serial, an empty one, one that is not a plain identifier, or unreadable


@dataclass(frozen=True)
class BayUsbSerialClaim:
    """What the station makes of the USB serial claimed in ``bay``: a problem (``shared_with``: the other
    bays claiming it), or None once nothing is wrong (the recorder left, or the other one did)."""

    bay: int | None
    problem: UsbSerialProblem | None
    shared_with: list[int | None] | None = None


@dataclass(frozen=True)
class Refused:
    """Something the station refused that is not a whole docking (those come as :class:`BayChanged`)."""

    refusal_class: RefusalClass
    count: int = 1


@dataclass(frozen=True)
class Duration:
    kind: DurationKind
    seconds: float
    size_bytes: int | None = None


@dataclass(frozen=True)
class CentralContact:
    """The uplink heard from the central (``reachable``) or failed to reach it."""

    reachable: bool


@dataclass(frozen=True)
class TaskChanged:
    """A supervised task changed state (running, backoff, cancelling, failed, stopped)."""

    name: str
    state: str
    restarts: int
    last_error: str | None = None


StatusEvent = (
    BayChanged | BayVacated | BayBouncing | BayUsbSerialClaim | Refused | Duration | CentralContact
    | TaskChanged
)


class StatusSink(Protocol):
    def publish(self, event: StatusEvent) -> None:
        """Take one event. Never blocks, never raises; callable from the event loop's thread or any
        worker thread."""


class _NullSink:
    def publish(self, event: StatusEvent) -> None:
        return None

    def __repr__(self) -> str:
        return "NULL_SINK"


NULL_SINK: StatusSink = _NullSink()
