"""Independent review 13 (rev13c): the MQTT API's ledger-page (``mqtt_api.py`` ``_ledger_page``) runs
``StationLedgerRead.page`` in ``asyncio.to_thread``: a worker thread, not ``run_reads``. On the embedded
backend (SQLite, the default for one site) the index has one connection, shared with the event loop, whose
transactions (``run_writes`` inline: a segment's acceptance, a registration's commit) run synchronously on the
loop while the worker reads on the same connection in parallel (``SqliteDatabase.run_reads`` says why that
must not happen: a read in another thread sees the uncommitted rows of the loop's transaction). The page
then answers, and the central *signs as witnessed*, a ledger head it never committed.

Here the MQTT API's ledger-page (``MqttApi._ledger_page``, the real handler) is started; a wrapper around
``StationLedgerRead.page`` holds a read made off the loop thread until the loop is inside a transaction that
inserts the station's next entry, which the loop then rolls back (a later step of the acceptance failing)
once the read is done. Expected: the head and the witnessed head are the committed ones. Control: the same
on PostgreSQL (the read in a reader thread on its own connection, the transaction the writer's), where only
committed rows are seen. (Rewritten with the fix: the first version read the page in a thread of its own,
what the handler did, which tested the thread rather than the handler.)
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.central.mqtt_api import MqttApi
from edge.central.registration import Caller
from edge.central.station_ledger_read import StationLedgerRead
from edge.custody.ledger import EntryType
from tests.central.conftest import FakeStation, start_http_central


class _RolledBack(Exception):
    pass


async def test_a_ledger_page_read_in_a_worker_never_sees_or_signs_an_uncommitted_head(
    tmp_path: Path, station: FakeStation, central_index: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
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
        record = index.station(station.station_id)
        assert record is not None
        loop_thread = threading.current_thread()
        in_transaction, read = threading.Event(), threading.Event()
        real_page = StationLedgerRead.page

        def page(self: StationLedgerRead, *args: Any) -> dict[str, Any]:
            if threading.current_thread() is not loop_thread:  # a read off the loop: during the transaction
                in_transaction.wait(60)
            try:
                return real_page(self, *args)
            finally:
                read.set()

        monkeypatch.setattr(StationLedgerRead, "page", page)
        api = MqttApi.__new__(MqttApi)  # only what _ledger_page uses
        api.parts = parts
        asked = asyncio.create_task(api._ledger_page(Caller(record), {"after": 0}))
        await asyncio.sleep(0)  # the handler runs up to its read (inline on SQLite, handed off otherwise)
        with pytest.raises(_RolledBack), index.transaction():
            index.insert_ledger_entries(station.station_id, [second], "2026-12-06T08:00:01Z")
            in_transaction.set()
            assert read.wait(60)
            raise _RolledBack
        status, seen = await asked
        assert status == 200
        assert index.ledger_head(station.station_id) == committed  # the entry was never accepted
        assert seen["head"] == {"seq": committed[0], "hash": committed[1]}, (
            f"the MQTT API's ledger page answered the uncommitted head {seen['head']} (the committed one "
            f"is seq {committed[0]}); witnessed_head signed by the central: {seen['witnessed_head']}")
        assert seen["witnessed_head"]["seq"] == committed[0]
        assert [e["seq"] for e in seen["entries"]] == [1]
    finally:
        await central.running.stop()
