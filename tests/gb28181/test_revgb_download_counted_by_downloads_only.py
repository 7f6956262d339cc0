"""Review revgb's rule in the store's one booking ledger (edge.ingest.kept_space): a GB/T 28181 download's
booking is counted by other downloads only. A docking copy, a disc export's staging, a document and a room's
start never count it (they come first); a download's receiver guard keeps every admitted booking of theirs
free, whenever it was made, and other downloads' only once admitted (one its own check may give up is never
kept). The end-to-end refusals these prevent are tests/gb28181/test_revgb_download_booking_review.py."""

from __future__ import annotations

from edge.ingest.kept_space import COPY_BOOKING, DOWNLOAD_BOOKING, KeptSpace
from edge.sources.gb28181.download_space import DownloadSpace

EXPORT_BOOKING = "disc export"


def test_writers_that_are_no_download_never_count_a_download_s_booking() -> None:
    ledger = KeptSpace()
    download = ledger.book(DOWNLOAD_BOOKING, "device/channel", 1000)
    earlier_copy = ledger.book(COPY_BOOKING, "BWC0001:A.MP4", 10)
    copy = ledger.book(COPY_BOOKING, "BWC0002:B.MP4", 20)
    export = ledger.book(EXPORT_BOOKING, "session 1", 30)
    assert [b.what for b in ledger.booked_before(copy)] == ["BWC0001:A.MP4"]
    assert [b.what for b in ledger.booked_up_to(copy)] == ["BWC0001:A.MP4", "BWC0002:B.MP4"]
    assert KeptSpace.total(ledger.booked_before(export)) == 30  # both copies, not the download
    assert KeptSpace.total(ledger.booked(excluding=DOWNLOAD_BOOKING)) == 60  # a room's start
    assert [b.what for b in ledger.booked(only=DOWNLOAD_BOOKING)] == ["device/channel"]
    # Control: another download counts it (and a copy counts a copy); everything is still booked.
    later_download = ledger.book(DOWNLOAD_BOOKING, "device-2/channel", 5)
    assert KeptSpace.total(ledger.booked_before(later_download)) == 1060
    assert KeptSpace.total(ledger.booked()) == 1065
    for booking in (download, earlier_copy, copy, export, later_download):
        ledger.release(booking)
    assert ledger.booked() == []


def test_a_download_s_guard_gives_way_to_every_admitted_writer_of_another_kind() -> None:
    """A copy booked after the download (its check did not count the download) is kept free once admitted;
    a later download's booking is not (it counted this one); an earlier download's only once admitted."""
    ledger = KeptSpace()
    earlier_download = ledger.book(DOWNLOAD_BOOKING, "earlier", 100)  # its check has still to judge it
    booking = ledger.book(DOWNLOAD_BOOKING, "this", 1000)
    space = DownloadSpace(ledger, booking, expected_bytes=1000)
    space.pass_check()
    later_copy = ledger.book(COPY_BOOKING, "BWC0001:A.MP4", 7)
    later_download = ledger.book(DOWNLOAD_BOOKING, "later", 50)
    ledger.admit(later_download)
    assert space.taken(0).bytes == 0, "neither an unjudged booking nor a later download's"
    ledger.admit(later_copy)
    assert space.taken(0).bytes == 7, "the copy comes first, booked after it or not"
    ledger.admit(earlier_download)
    assert space.taken(0).bytes == 107
    # Past its expected size it keeps every admitted booking free, later downloads' included.
    assert space.taken(1001).bytes == 157
