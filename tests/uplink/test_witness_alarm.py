"""Stations witness the central: a central whose Merkle log was rewritten under a head it had signed
(same signing key, same address) is caught by the station's consistency check: a ledger alarm, the
uplink stops, nothing more is receipted or erased, and the status shows it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from edge.central.config import CentralConfig
from edge.central.embedded import EmbeddedCentral
from edge.central.identity import load_signing_key
from edge.central.log import MerkleLog
from edge.central.service import start_central
from edge.central.sqlite import SqliteDatabase
from edge.central.sqlite.log import create_schema as create_log_schema
from edge.custody.canonical import parse_json
from edge.custody.keys import StationKey
from edge.sources.usb.offload import OffloadOutcome
from edge.uplink.witness import witness_status
from tests.station.harness import Station, simulated_station, spec
from tests.uplink.test_uplink_station import FAST_RETRY, STATION, evidence_on_recorder


def rewrite_log(config: CentralConfig, mode: str, key: StationKey | None = None) -> None:
    """``rewritten``: replace leaf 0 with another well-formed leaf and append one more; ``shrunk``: drop
    the newest leaf (the newest item deleted with its leaf, nodes and heads). Either way every node is
    rebuilt and a new head signed with the central's own key."""
    database = SqliteDatabase.open(config.layout.index_db)
    try:
        conn = database.conn
        rows = conn.execute("SELECT entry FROM merkle_leaves ORDER BY idx")
        entries = [parse_json(text) for (text,) in rows]
        if mode == "rewritten":
            entries[0] = {**entries[0], "accepted_utc": "2020-01-01T00:00:00.000000Z"}
            entries.append({**entries[-1], "item": "00000000-0000-4000-8000-000000000001"})
        else:
            entries.pop()
        with database.transaction():
            for table in ("merkle_leaves", "merkle_nodes", "merkle_tree_heads"):
                for suffix in ("no_delete", "no_update"):
                    conn.execute(f"DROP TRIGGER IF EXISTS {table}_{suffix}")
                conn.execute(f"DELETE FROM {table}")
            create_log_schema(conn)
            merkle = MerkleLog(database.log_store, key or load_signing_key(config), config.central.id)
            for entry in entries:
                merkle.append(entry)
            merkle.tree_head()
    finally:
        database.close()


async def wait_alarm(station: Station, timeout_s: float = 20) -> dict[str, object]:
    async with asyncio.timeout(timeout_s):
        while not station.ledger("witness_alarm"):
            await asyncio.sleep(0.05)
    return station.ledger("witness_alarm")[0]


@pytest.mark.parametrize(
    ("mode", "alarm_says"),
    [("rewritten", "not an extension"), ("shrunk", "the log shrank"), ("control", None)],
)
async def test_a_rewritten_central_log_is_an_alarm_that_stops_the_uplink(
    tmp_path: Path, mode: str, alarm_says: str | None
) -> None:
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    config = central.config
    specs = [spec(0, files=2), spec(1, files=2)]
    async with simulated_station(
        tmp_path,
        specs,
        uplink={**central.uplink_config(), **FAST_RETRY, "tree_head_interval_s": 0.2},
        wipe={"policy": "after-receipt", "receipt_wait_s": 30},
    ) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
        receipts_before = len(station.ledger("receipt"))
        await central.stop()
        # The same central comes back (same address, same signing key) with its log rewritten, or, for
        # the control, exactly as it was.
        copy = config.model_copy(update={"central": config.central.model_copy(
            update={"store_dir": tmp_path / "central-copy"})})
        shutil.copytree(config.central.store_dir, copy.central.store_dir)
        if alarm_says is not None:
            rewrite_log(copy, mode)
        running = await start_central(copy)
        try:
            store = station.agent.store
            assert store is not None
            if alarm_says is not None:
                alarm = await wait_alarm(station)
                assert alarm_says in str(alarm["reason"])
                status = witness_status(store)
                assert status.alarm is not None and alarm_says in status.alarm
                # The uplink stopped: the next recorder's files are copied and verified but, with no
                # receipt, not erased; nothing more was receipted.
                await station.dock_recorder(specs[1].device_serial, 2)
                await station.wait_results(2)
                assert station.agent.results[1].outcome is OffloadOutcome.AWAITING_RECEIPT
                assert len(evidence_on_recorder(station, specs[1].device_serial)) == 2
                assert len(station.ledger("receipt")) == receipts_before
                assert len(station.ledger("witness_alarm")) == 1, "one alarm on the record, not one per retry"
            else:
                await station.dock_recorder(specs[1].device_serial, 2)
                await station.wait_results(2)
                assert station.agent.results[1].outcome is OffloadOutcome.DONE
                assert station.ledger("witness_alarm") == []
                assert witness_status(store).alarm is None
                assert (witness_status(store).newest_tree_size or 0) >= 4
        finally:
            await running.stop()
