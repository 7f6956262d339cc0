"""Review 6, key epochs: the central reads a station's stored ``key_rotated`` entries on the event loop.

`Registrar._accept_segment` evaluates ``self._stored_rotations(station_id, head[0])`` as an argument of
``asyncio.to_thread(check_segment_checkpoints, ...)``, i.e. on the event loop, and the first push of each
station after a central start reads the station's whole stored ledger (``ledger_entries(..., type_=
KEY_ROTATED)``: station_ledger has no index on type, the plan is a range over the station's every row).
Measured here (warm page cache, 1 M entries of ~0.3 kB, what a busy station at checkpoint_every = 1 makes
in about a year): 0.29 s per station, with the loop blocked (every upload, console request, health
check); after a restart every station's first push does it once (300 stations: ~90 s of blocked loop in
the first minutes, more on a cold cache). Spot checks do the same per station per check
(`spotcheck._rotations` -> `key_rotations`, called synchronously in the async `check_item`).

Expected: the read in the worker thread with the rest of the check (and/or an index on (station, type,
seq), or the rotations kept in their own table as they are accepted).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from edge.custody.ledger import EntryType
from tests.central.conftest import CentralParts, FakeStation, enroll


async def test_a_segment_push_reads_the_stored_rotations_off_the_event_loop(
    parts: CentralParts, station: FakeStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    read_on: list[threading.Thread] = []
    original = type(parts.index).ledger_entries

    def ledger_entries(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("type_") == EntryType.KEY_ROTATED:
            read_on.append(threading.current_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(parts.index), "ledger_entries", ledger_entries)
    enroll(parts.index, station)
    path = station.station_id
    station.acquire(b"first")
    await parts.registrar.accept_segment(parts.caller(path), path, station.segment(0))
    head = parts.index.ledger_head(path)[0]
    station.acquire(b"second")
    await parts.registrar.accept_segment(parts.caller(path), path, station.segment(head))
    assert read_on, "control: the stored rotations were read for the pushes"
    assert loop_thread not in read_on, (
        "the station's stored key_rotated entries (its whole ledger at the first push after a start) are "
        "read on the event loop")
