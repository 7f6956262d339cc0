"""A GB/T 28181 download's booking in the store's one booking ledger (edge.ingest.kept_space).

Two downloads at once (two devices, `[gb28181.download] concurrency`) used to pass their look at the disk on
the same free bytes, and one was cut `disk-full` partway once the disk filled: a partial copy, and a 4G
uplink's bandwidth wasted. So a download books, before its check, what it expects to take of the spool's disk
(`booked_bytes`): the recording's expected size (`expected_bytes`: its listed FileSize, else
`[gb28181.download] unlisted_recording_mb`; no less than one byte more than an earlier copy the station's disk
guard cut short received; at most `max_recording_mb`, the most the receiver takes) times the room the
receiver's guard keeps per byte (edge.sources.gb28181.downloads `room_per_byte_downloaded`: the raw PS itself
and, with a reserve, `ROOM_PER_RECEIVED_BYTE` more to seal it). Its check counts the bookings made before its
own (`KeptSpace.booked_before`, admitted or not) and what the groups hold (the rooms recording); passed, the
booking is admitted (other downloads' guards count it from then on). Only downloads count it: a room's start,
a docking copy, a disc export and a document never do (review revgb: they come first, and a download's guard
gives way to them). Failed while bookings made before it have still to write, the download is refused up front
(edge.sources.gb28181.downloads `_booked_or_refused`): the others still need that space, and it is tried again
once another download ends (the scheduler asks a new pass of the devices refused so meanwhile), or at a later
pass. Failed with no booking before it (the disk short of its own size: a FileSize listed in bits, stale or
false, which reviews 26 and 28 keep from refusing a recording for ever), it goes on as before downloads
booked: it books nothing (`book_nothing`), its guard keeps every admitted booking free, and the guard cuts it
should the disk fill (then edge.sources.gb28181.downloads `_tight_for` decides its retries).

While it runs, its receiver's guard (edge.gb28181.media, `ReceiverSpace`) keeps free what `taken` says: the
groups' space, every admitted booking of another kind (a docking copy, a disc export, a document: they never
count a download's booking, review revgb, so they come first whenever they booked, and the download is the one
cut, as before downloads booked) and the admitted downloads' bookings made before its own (one that books
nothing: every admitted booking), never its own (the guard keeps the download's own room itself) nor a later
download's (that one passed its check counting this booking), nor one its check has still to judge (it may
give it up). Each write lowers the booking by the bytes written (they are in the free figure from then on);
what stays booked at the end is the room to seal what came. A download that receives more than it expected (a
FileSize listed too small, an estimate too low) has passed its booking: from then on its guard keeps free
every admitted booking too, later ones included, as a writer that books nothing does, so a device listing a
small size takes no space another writer's check counted on. A device listing an absurd size (larger than the
disk) fails its own check: it is never admitted, so no writer that books nothing counts it (review revs13a's
rule), a booking writer after it at most waits for its check; it is refused while other bookings are in
progress, and alone goes on booking nothing.

The booking is given up when the transfer ends, however it ends (`KeptSpace.booking_for`), before the
copy into the store books its own (edge.sources.gb28181.recordings `ingest_download`). Known limit: a
transfer that stops making progress holds its booking until the receiver ends it (its idle timeout, its
stall rule or its hard cap: edge.gb28181.media `time-limit`), so a stuck download's booking lasts no longer
than its session, but as long as that.
"""

from __future__ import annotations

from edge.gb28181.media import SpaceTaken
from edge.ingest.kept_space import DOWNLOAD_BOOKING, Booking, KeptSpace

# The kind of a download's booking, as a refusal counts it ("1 download(s) in progress ..."): counted by
# other downloads only (edge.ingest.kept_space `KeptSpace.counts`).
__all__ = ["DOWNLOAD_BOOKING", "DownloadSpace"]


class DownloadSpace:
    """One download's booking, for its receiver's guard (edge.gb28181.media `ReceiverSpace`)."""

    def __init__(self, kept_space: KeptSpace, booking: Booking, expected_bytes: int) -> None:
        self._kept_space = kept_space
        self.booking = booking
        self.expected_bytes = expected_bytes  # the recording's size as known: past it, the booking is passed
        self.passed = False  # its check passed (`pass_check`); else it books nothing (`book_nothing`)

    def pass_check(self) -> None:
        """Its check passed: the booking is admitted (writers that book nothing count it from now on)."""
        self.passed = True
        self._kept_space.admit(self.booking)

    def book_nothing(self) -> None:
        """It goes on without a booking (the disk is short of its own size, not of others' bookings): as
        before downloads booked, its guard keeps every admitted booking free."""
        self._kept_space.set_remaining(self.booking, 0)

    def taken(self, received: int) -> SpaceTaken:
        """What the guard keeps free beyond the reserve, `received` bytes in (see the module docstring)."""
        own = self.booking.order
        # Admitted bookings only: one its check has still to judge may be refused (review revs13a), and a
        # download's own check that gives up its booking never cuts another (review revgb).
        admitted = [b for b in self._kept_space.booked() if b.order != own and b.admitted]
        if not self.passed or received > self.expected_bytes:
            return self._kept_space.held_and(admitted)
        # Within its booking: every other kind's (they do not count downloads: they come first, whenever
        # booked) and the downloads' booked before its own (a later one counted this one at its check).
        return self._kept_space.held_and(
            [b for b in admitted if b.kind != DOWNLOAD_BOOKING or b.order < own])

    def wrote(self, count: int) -> None:
        self._kept_space.wrote(self.booking, count)
