"""Space on the store's disk that writers who cannot wait hold beyond the store's reserve (issue 11).

The ingest keeps the store's reserve ([offload] min_free_bytes) free of every copy. But while a room records,
its ffmpeg writes into the same free space, and the recording reserve (edge.rooms.reserve) stops a room's
source once the disk is under the reserve plus the rooms' recording margin: a docking copy (or a GB/T 28181
recording download) taking that margin would stop an interview's recording to copy a file that could have
waited on its device. So writers that cannot wait register here while they write (a group, such as the
rooms, with its members, such as the rooms recording, and the group's rule for the bytes it holds); a copy
that can wait keeps those bytes free too, or is refused as the store being full (the original stays on its
device and is copied at a later docking).

Bookings (review rev11e): a check reads the free space once, at the start of what it writes, so the bytes
other writers that can wait have passed their own check for and not yet written are in no free figure. Each
such writer (a docking copy, a disc export's staging, an attached document) books its expected size here,
and every check counts the bookings as taken: two copies at once never both pass on the same free bytes,
and a room's start (edge.rooms.service) counts them before it finds its space. A copy lowers its booking as
it writes (the bytes written are in the free figure from then on) and gives it up when it ends. A check
books first and then reads the others' bookings and the free space, in that order: of two checks at once
each counts the other, or the later counts the earlier (never neither); a booking made after one's own is
not counted by it (:meth:`KeptSpace.booked_before`), so of two at once the earlier can pass, and a writer's
re-checks while it writes count the same bookings (a later writer, even one refused, never ends it).

A GB/T 28181 download's booking (kind `DOWNLOAD_BOOKING`) is counted only by other downloads (review revgb):
a room's start, a docking copy, a disc export's staging and a document count every booking but downloads'
(:meth:`KeptSpace.counts`: :meth:`KeptSpace.booked_before` and :meth:`KeptSpace.booked_up_to` apply it by
the checking booking's kind; a writer with no booking of its own asks :meth:`KeptSpace.booked` with
`excluding`). They come first, as before downloads booked: a download can wait on its device, an interview
cannot, and a download's guard keeps every admitted booking of theirs free, whenever it was made, and cuts
the download should they need the space. So the ordering rule above holds between writers that count each
other's kind; between a download and another writer only the download counts, and should its check miss a
booking made after its own, its guard still gives way to it once it is admitted.

A booking is owned by the coroutine that made it (:meth:`KeptSpace.booking_for`, review rev11f): it is
given up when that coroutine ends, however it ends. A writer that hands its writing to a worker thread
(:meth:`KeptSpace.handed_off`) keeps it until the worker ends too: a coroutine cancelled while its work is
still queued gives it up at once (the work, should it start, writes nothing), and one cancelled while its
work runs leaves it to the worker (the bytes are still being written), which stops at its next chunk.

A writer that can wait and books nothing, because it measures the disk after each write instead (a GB/T 28181
media receiver without a booking of its own: edge.gb28181.media), keeps free what the groups hold and every
admitted booking (:meth:`KeptSpace.held_or_booked`). A GB/T 28181 download books what it expects to write
before it starts (edge.sources.gb28181.download_space, review gbbook: two downloads at once passed their
checks on the same free bytes and one was cut partway); its receiver keeps free what the groups hold, every
admitted booking of another kind and the admitted downloads' bookings before its own
(:meth:`KeptSpace.held_and`), never its own, and every admitted one once it has written more than it booked; a
download's copy into the store books only once its transfer has ended (edge.sources.gb28181.recordings
`ingest_download`), when the download's own booking is given up. A booking is admitted
(:meth:`KeptSpace.admit`) once its writer's check has passed: one its check has still to judge may be refused
(a docking copy books the size the recorder lists, up to [offload] max_file_bytes, and its check runs when the
executor gets to it), and a hostile recorder listing a file larger than the disk would otherwise cut every
download in flight at each docking (review revs13a). The checks between booking writers count every booking
before their own of a kind they count, admitted or not, as above: a booking about to be refused costs another
booking writer at most a wait, never a cut.

This module knows no group: edge.rooms registers its rule (edge.rooms.space.rooms_kept_free), so edge.ingest
never imports edge.rooms. Copies run in worker threads: its state is behind a lock, held for no I/O.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edge.ingest.copy import StoreFullError


@dataclass(frozen=True)
class KeptFree:
    """Bytes a group of writers holds beyond the store's reserve, and what to say about them."""

    bytes: int
    # For a refusal, after "keeping free ... for": names the members and the settings behind the figure.
    what: str
    group: str  # "rooms"
    members: tuple[str, ...]  # the rooms recording

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "members": list(self.members), "bytes": self.bytes}


class SpaceKeptError(StoreFullError):
    """A copy that would take space writers hold (`kept`): refused like a full store, the original left on
    its device for a later docking; the store itself is not full (its ledger reserve stays held)."""

    def __init__(self, reason: str, kept: Sequence[KeptFree]) -> None:
        super().__init__(reason)
        self.kept = tuple(kept)


# The bytes a group holds, from its members now (sorted; never empty).
KeptFreeRule = Callable[[Sequence[str]], KeptFree]


# The kind of a docking copy's (or a GB/T 28181 download's copy into the store) booking.
COPY_BOOKING = "copy"
# The kind of a GB/T 28181 download's booking (edge.sources.gb28181.download_space): counted by other
# downloads only (`KeptSpace.counts`).
DOWNLOAD_BOOKING = "download"


@dataclass(eq=False)  # one booking is itself: released by identity
class Booking:
    """Bytes a writer that can wait passed its check for and has still to write."""

    kind: str  # "copy", "disc export", "document": how a refusal counts it
    what: str  # printable: the device and file shown, the session
    remaining: int
    order: int  # when it was booked: a check counts only the bookings made before its own
    admitted: bool = False  # its writer's check passed: counted by writers that book nothing


@dataclass(frozen=True)
class HeldOrBooked:
    """What the groups hold and the admitted bookings have still to write, together: what a writer that
    books nothing keeps free beyond the store's reserve (edge.gb28181.media's receiver guard reads it)."""

    bytes: int
    # For a refusal: "5 held for the rooms recording (...) and 7 booked by 1 copy(s) in progress (...)";
    # empty when nothing is held or booked.
    said: str


NOTHING_HELD_OR_BOOKED = HeldOrBooked(0, "")


def said_bookings(bookings: Sequence[Booking]) -> str:
    """For a refusal: "2 copies (24.0 MiB) and 1 disc export (30.0 MiB)" (empty when none)."""
    kinds: dict[str, list[int]] = {}
    for booking in bookings:
        kinds.setdefault(booking.kind, []).append(booking.remaining)
    return " and ".join(
        f"{len(sizes)} {kind}(s) in progress ({sum(sizes) / (1 << 20):.1f} MiB still to write)"
        for kind, sizes in sorted(kinds.items()))


class WorkAbandoned(Exception):
    """The coroutine that handed this work to a worker thread was cancelled: the work writes nothing more."""


class HandedOff:
    """A booking (or none: a writer that cannot wait books nothing) shared by the coroutine that made it and
    the one worker-thread function it hands its writing to; given up once, when the last of the two ends."""

    def __init__(self, ledger: KeptSpace, booking: Booking | None) -> None:
        self._ledger = ledger
        self.booking = booking
        self._lock = threading.Lock()
        self._owner_gone = False  # the coroutine ended (done, failed or cancelled)
        self._running = False  # the worker function started and has not ended
        self._released = False

    @property
    def abandoned(self) -> bool:
        """The coroutine is gone: a running worker stops at its next chunk (from the worker's progress)."""
        with self._lock:
            return self._owner_gone

    @contextlib.contextmanager
    def in_worker(self) -> Iterator[None]:
        """In the worker thread, around the writing: WorkAbandoned, before anything is written, when the
        coroutine was cancelled while the work waited in the executor's queue."""
        with self._lock:
            if self._owner_gone:
                raise WorkAbandoned("the copy was cancelled before it started")
            self._running = True
        try:
            yield
        finally:
            with self._lock:
                self._running = False
                release = self._owner_gone
            if release:
                self._release()

    def owner_done(self) -> None:
        """The coroutine ends: the booking goes now, unless the worker still writes (then when it ends)."""
        with self._lock:
            self._owner_gone = True
            release = not self._running
        if release:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if self.booking is not None:
            self._ledger.release(self.booking)


class KeptSpace:
    """The groups holding space now, each with its members, and the bookings of writers that can wait;
    shared by every copy into one store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, list[str]] = {}
        self._rules: dict[str, KeptFreeRule] = {}
        self._bookings: list[Booking] = []
        self._order = itertools.count()

    @contextlib.contextmanager
    def holding(self, group: str, member: str, rule: KeptFreeRule) -> Iterator[None]:
        """`member` of `group` holds the group's space (by `rule`) for as long as the block runs."""
        with self._lock:
            self._rules[group] = rule
            self._members.setdefault(group, []).append(member)
        try:
            yield
        finally:
            with self._lock:
                members = self._members[group]
                members.remove(member)
                if not members:
                    del self._members[group]

    def now(self) -> list[KeptFree]:
        """What each group holding space holds now (read at every copy: members come and go). From any
        thread."""
        with self._lock:
            held = [(self._rules[group], sorted(set(members)))
                    for group, members in sorted(self._members.items())]
        return [rule(members) for rule, members in held]

    def held_or_booked(self, *, excluding: str | None = None) -> HeldOrBooked:
        """What the groups hold now and every admitted booking's bytes still to write (read before the free
        space it is set against, as a booking's check does; a booking its check has still to judge is not
        counted: it may be refused), but those of kind `excluding`. From any thread."""
        return self.held_and([b for b in self.booked(excluding=excluding) if b.admitted])

    def held_and(self, bookings: Sequence[Booking]) -> HeldOrBooked:
        """What the groups hold now and `bookings` (read before, a snapshot) have still to write."""
        booked = [b for b in bookings if b.remaining]
        held = [kept for kept in self.now() if kept.bytes]
        said = [f"{kept.bytes} held for {kept.what}" for kept in held]
        if booked:
            said.append(f"{self.total(booked)} booked by {said_bookings(booked)}")
        return HeldOrBooked(sum(kept.bytes for kept in held) + self.total(booked), " and ".join(said))

    # -- bookings --------------------------------------------------------------------------------

    def book(self, kind: str, what: str, size: int) -> Booking:
        """Book `size` bytes (before reading the free space it is checked against); give it up with
        :meth:`release` on every path."""
        with self._lock:
            booking = Booking(kind, what, max(0, size), next(self._order))
            self._bookings.append(booking)
        return booking

    @contextlib.contextmanager
    def booking_for(self, kind: str, what: str, size: int) -> Iterator[Booking]:
        """`size` bytes booked (:meth:`book`) for as long as the block runs, given up however it ends."""
        booking = self.book(kind, what, size)
        try:
            yield booking
        finally:
            self.release(booking)

    @contextlib.contextmanager
    def handed_off(self, kind: str, what: str, size: int | None) -> Iterator[HandedOff]:
        """Like :meth:`booking_for` (no booking when `size` is None) for a coroutine that hands its writing
        to a worker thread (the worker runs it inside :meth:`HandedOff.in_worker`): the booking lasts until
        both the block and the worker have ended, and a worker starting after the block ended writes
        nothing."""
        shared = HandedOff(self, None if size is None else self.book(kind, what, size))
        try:
            yield shared
        finally:
            shared.owner_done()

    def admit(self, booking: Booking) -> None:
        """`booking`'s writer passed its check: its bytes count for writers that book nothing from now on
        (:meth:`held_or_booked`). Once is enough; again is harmless."""
        with self._lock:
            booking.admitted = True

    def release(self, booking: Booking) -> None:
        with self._lock:
            if booking in self._bookings:
                self._bookings.remove(booking)

    def set_remaining(self, booking: Booking, remaining: int) -> None:
        """What `booking` has still to write is `remaining` now (a writer whose size grows as it comes)."""
        with self._lock:
            booking.remaining = max(0, remaining)

    def wrote(self, booking: Booking, count: int) -> None:
        """`count` more bytes of `booking` are written: in the free figure from now on."""
        with self._lock:
            booking.remaining = max(0, booking.remaining - count)

    def booked(self, *, excluding: str | None = None, only: str | None = None) -> list[Booking]:
        """Every booking now (copies of them: a snapshot), but those of kind `excluding`, or those of kind
        `only` alone. Read before the free space it is set against. A writer that books nothing and is no
        download (a room's start) asks it `excluding=DOWNLOAD_BOOKING`."""
        with self._lock:
            return [Booking(b.kind, b.what, b.remaining, b.order, b.admitted) for b in self._bookings
                    if b.kind != excluding and (only is None or b.kind == only)]

    @staticmethod
    def counts(checking_kind: str, booking_kind: str) -> bool:
        """Whether a check of a booking of `checking_kind` counts a booking of `booking_kind`: all do, but a
        download's booking is counted by downloads only (see the module docstring)."""
        return booking_kind != DOWNLOAD_BOOKING or checking_kind == DOWNLOAD_BOOKING

    def booked_before(self, own: Booking) -> list[Booking]:
        """The bookings made before `own` that its kind counts (a snapshot): what `own`'s check counts as
        taken."""
        return [b for b in self.booked() if b.order < own.order and self.counts(own.kind, b.kind)]

    def booked_up_to(self, own: Booking) -> list[Booking]:
        """The bookings made before `own` that its kind counts, and `own` (a snapshot): what a re-check while
        `own` writes counts; a later writer's booking is not (it passed its own check counting this one, or
        is a download, which gives way)."""
        return [b for b in self.booked() if b.order <= own.order and self.counts(own.kind, b.kind)]

    @staticmethod
    def total(bookings: Sequence[Booking]) -> int:
        return sum(b.remaining for b in bookings)
