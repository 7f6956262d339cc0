"""Review 6, spot checks: the continuity check of an item whose last entry has no checkpoint of its own
now runs to the station's *newest* checkpoint, not to the first one after the item.

1562e49 replaced "the first of every checkpoint of the station at or after the item's last entry" by
"the checkpoint at its last entry, else `latest_checkpoint`". A station signs at every entry only by
default: one upgraded in place with ``checkpoint_every = 64`` (still allowed, and since ledger format 2
no longer warned about), or entries pushed while it faced a central that did not take ``checkpoints``,
leave most entries without one. For such an item, `_continuity` then reads, holds in a list
(``segment = list(...)``) and re-hashes every entry from the item's first to the station's head: for an
item a year old on a busy station, ~10^6 entries (~0.5 kB each, hundreds of MB) per sampled item, on the
event loop (`check_item` is a coroutine calling it synchronously). Before, the span ended at the first
checkpoint after the item.

Expected: the first checkpoint at or after the item's last entry, found by an indexed query
(``... WHERE station = ? AND seq >= ? ORDER BY seq LIMIT 1``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from edge.central.spotcheck import _continuity
from edge.custody.ledger import EntryType
from tests.central.conftest import CentralParts, FakeStation, enroll


async def test_an_items_continuity_ends_at_the_first_checkpoint_after_it_not_at_the_stations_head(
    parts: CentralParts, station: FakeStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    enroll(parts.index, station)
    path, caller = station.station_id, parts.caller(station.station_id)
    early = station.acquire(b"an item from the start of the year")
    head = 0
    first_after_item = 0
    for batch in range(10):  # the rest of the year, pushed in segments at cadence 20
        for n in range(20):
            station.record(EntryType.ERROR, None, {"stage": "filler", "reason": f"{batch}.{n}"})
        await parts.registrar.accept_segment(caller, path, station.segment(head))
        head = parts.index.ledger_head(path)[0]
        first_after_item = first_after_item or head
    entries = list(parts.index.ledger_entries(path, item=early.item))
    last = entries[-1].seq
    assert not parts.index.checkpoints(path, last, last)  # control: no checkpoint at its last entry
    read_to: list[int | None] = []
    original = type(parts.index).ledger_entries

    def ledger_entries(self: Any, station_id: str, start_seq: int = 1, **kwargs: Any) -> Any:
        if kwargs.get("item") is None and kwargs.get("type_") is None:
            read_to.append(kwargs.get("end_seq"))
        return original(self, station_id, start_seq, **kwargs)

    monkeypatch.setattr(type(parts.index), "ledger_entries", ledger_entries)
    record = SimpleNamespace(item=early.item, station=path, chain_seq=early.entry.seq)
    problems = _continuity(parts.index, record, entries, parts.index.station_keys(path), [])  # type: ignore[arg-type]
    assert problems == []
    assert read_to == [first_after_item], (
        f"the continuity of an item whose last entry is seq {last} read the station's ledger up to seq "
        f"{read_to} (its newest checkpoint), not to seq {first_after_item} (the first checkpoint after it)")
