"""Review 21: the pure parts of two fixes, on hostile input.

* #4 completed_manifest_owed reads the ledger alone: owed after a late segment until a completed manifest
  acquired after it is sealed; entries of other sessions, or a completed manifest never sealed, change
  nothing.
* #8 the station times kept in a run directory (``station_times``) are read back for a resumed session:
  a line that is not one, names a file the station did not write, or was cut short by a crash (no
  newline), is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.custody.ledger import LedgerEntry
from edge.rooms.capture import STATION_TIMES_FILE, read_station_times, write_station_times
from edge.rooms.reconcile import completed_manifest_owed

S = "5d0c4f5e-8f7e-4d5b-9b44-0c1f0f7f2d11"
OTHER = "0b9c1f83-54a4-4d8a-9a7e-2a8f4d5f0e10"


def _entry(seq: int, type_: str, item: str | None = None, **data: Any) -> LedgerEntry:
    return LedgerEntry(seq, "2026-12-05T10:00:00.000000Z", type_, item, data, "0" * 64, "0" * 64)


def test_a_completed_manifest_is_owed_from_a_late_segment_until_one_is_sealed_after_it() -> None:
    stopped = [_entry(1, "segment_sealed", "s1", room_session=S),
               _entry(2, "session_stopped", room_session=S)]
    assert not completed_manifest_owed(stopped, S)  # control: nothing sealed after the stop
    late = [*stopped, _entry(3, "segment_sealed", "s2", room_session=S)]
    assert completed_manifest_owed(late, S)
    acquired = [*late, _entry(4, "acquired", "m1", room_session=S, role="session-manifest-completed")]
    assert completed_manifest_owed(acquired, S)  # acquired, never sealed: a crash in between
    sealed = [*acquired, _entry(5, "sealed", "m1")]
    assert not completed_manifest_owed(sealed, S)
    # Another late segment after that manifest: owed again.
    assert completed_manifest_owed([*sealed, _entry(6, "segment_sealed", "s3", room_session=S)], S)


def test_entries_of_other_sessions_and_odd_data_change_nothing() -> None:
    late = [_entry(1, "session_stopped", room_session=S), _entry(2, "segment_sealed", "s2", room_session=S)]
    others = [
        _entry(3, "acquired", "m9", room_session=OTHER, role="session-manifest-completed"),
        _entry(4, "sealed", "m9"),
        _entry(5, "acquired", "m8", room_session=S, role="session-manifest"),  # the stop's own manifest
        _entry(6, "sealed", "m8"),
        _entry(7, "acquired", None, room_session=S, role="session-manifest-completed"),
        _entry(8, "sealed", None),
        _entry(9, "segment_sealed", "x", room_session=["not", "a", "string"]),
    ]
    assert completed_manifest_owed([*late, *others], S)
    assert not completed_manifest_owed([*late, *others], OTHER)  # never stopped, nothing late


def test_station_times_read_back_skip_lines_the_station_did_not_write(tmp_path: Path) -> None:
    write_station_times(tmp_path, "seg-000000.mp4", 1_000, 2_000)
    write_station_times(tmp_path, "seg-000001.mp4", 2_000, 3_000)
    with open(tmp_path / STATION_TIMES_FILE, "ab") as times:
        times.write(b"../../etc/passwd 1 2\nseg-000002.mp4 5000 4000\nseg-000003.mp4 -1 7\n"
                    b"seg-000004.mp4 1 2 3\nseg-000005.mp4 x y\n\x00\xff garbage\nseg-000006.mp4 4000 50")
    assert read_station_times(tmp_path) == {
        "seg-000000.mp4": (1_000, 2_000), "seg-000001.mp4": (2_000, 3_000)}
    assert read_station_times(tmp_path / "missing") == {}
