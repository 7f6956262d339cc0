"""Independent review 13 (rev13c): the MQTT API's ledger-page (``mqtt_api.py`` ``_ledger_page``) runs
``StationLedgerRead.page`` in ``asyncio.to_thread``: a worker thread, not ``run_reads``. On the embedded
backend (SQLite, the default for one site) the index has one connection, shared with the event loop, whose
transactions (``run_writes`` inline: a segment's acceptance, a registration's commit) run synchronously on the
loop while the worker reads on the same connection in parallel (``SqliteDatabase.run_reads`` says why that
must not happen: a read in another thread sees the uncommitted rows of the loop's transaction). The page
then answers, and the central *signs as witnessed*, a ledger head it never committed.

Here the loop is inside a transaction that inserts the station's next entry and is then rolled back (a later
step of the acceptance failing); during it, the page is read exactly as the MQTT API reads it (another
thread, the same ``parts``). Expected: the head and the witnessed head are the committed ones. Control: the
same on PostgreSQL (the worker reads on the autocommit connection, the transaction is the writer's), where
only committed rows are seen.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from edge.central.station_ledger_read import StationLedgerRead
from edge.custody.ledger import EntryType
from tests.central.conftest import FakeStation, start_http_central


class _RolledBack(Exception):
    pass


async def test_a_ledger_page_read_in_a_worker_never_sees_or_signs_an_uncommitted_head(
    tmp_path: Path, station: FakeStation, central_index: dict[str, Any] | None,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=central_index)
    try:
        parts = central.running.parts
        index = parts.index
        index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        first = station.record(EntryType.ACQUIRED, "0b9e8a4e-8c1d-4a57-9a57-3f2a8f7f7c01",
                               {"device_serial": "DSJ-0001", "size": 1, "sha256": "a" * 64, "attempt": 0})
        with index.transaction():
            index.insert_ledger_entries(station.station_id, [first], "2026-12-06T08:00:00Z")
        committed = index.ledger_head(station.station_id)
        assert committed[0] == 1
        second = station.record(EntryType.VERIFIED, "0b9e8a4e-8c1d-4a57-9a57-3f2a8f7f7c01",
                                {"sha256": "a" * 64})
        seen: dict[str, Any] = {}

        def mqtt_ledger_page() -> None:  # what asyncio.to_thread runs for the MQTT API's ledger-page
            seen.update(StationLedgerRead(parts).page(station.station_id, 0, 500, None))

        with pytest.raises(_RolledBack), index.transaction():
            index.insert_ledger_entries(station.station_id, [second], "2026-12-06T08:00:01Z")
            worker = threading.Thread(target=mqtt_ledger_page)
            worker.start()
            worker.join(60)
            assert not worker.is_alive()
            raise _RolledBack
        assert index.ledger_head(station.station_id) == committed  # the entry was never accepted
        assert seen["head"] == {"seq": committed[0], "hash": committed[1]}, (
            f"the ledger page read in a worker thread answered the uncommitted head {seen['head']} (the "
            f"committed one is seq {committed[0]}); witnessed_head signed by the central: "
            f"{seen['witnessed_head']}")
        assert [e["seq"] for e in seen["entries"]] == [1]
    finally:
        await central.running.stop()
