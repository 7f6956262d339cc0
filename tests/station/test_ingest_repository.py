"""The item and ledger rows live behind one repository; older stores move into it on opening."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store

from .conftest import session_info, volume_hashes

ROOT = Path(__file__).resolve().parents[2]
# Where SQL may be written: the repository, the store's schema, and the ledger's own table class.
SQL_HOMES = {"edge/ingest/repository.py", "edge/ingest/store.py"}
SQL_CALL = re.compile(r"\.execute(many|script)?\(")

# The USB state table of stores made before the ingest pipeline, exactly as they hold it.
OLD_RECORDER_FILES = """
CREATE TABLE recorder_files (
    device_serial TEXT NOT NULL,
    original_path TEXT NOT NULL,
    device_size INTEGER NOT NULL,
    device_mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL,
    item TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (device_serial, original_path, device_size, device_mtime_ns)
)
"""


def test_sources_and_the_pipeline_write_no_sql_of_their_own() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("edge/ingest", "edge/sources")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in SQL_HOMES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL_CALL.search(line)
    ]
    assert offenders == [], "item and ledger SQL belongs in edge/ingest/repository.py"


def test_the_sql_check_finds_a_query_when_there_is_one() -> None:
    assert SQL_CALL.search('rows = self.store.conn.execute("SELECT item FROM items")')
    assert SQL_CALL.search("conn.executemany(query, rows)")


async def test_a_store_from_before_the_pipeline_resumes_in_place(
    tmp_path: Path, volume: Path, config_factory: Callable[..., StationConfig]
) -> None:
    """Files sealed by an older agent (state in `recorder_files`) are neither copied again nor lost:
    after the upgrade the next docking re-verifies and erases them."""
    store = StationStore(tmp_path / "store", "TEST-STATION")
    first = await VolumeOffload(store, config_factory(wipe={"policy": "never"}), session_info(), volume).run()
    assert first.outcome is OffloadOutcome.DONE and first.wiped == 0
    with store.transaction() as conn:
        conn.execute(OLD_RECORDER_FILES)
        conn.execute(
            "INSERT INTO recorder_files SELECT device, original,"
            " CAST(substr(version, 1, instr(version, ':') - 1) AS INTEGER),"
            " CAST(substr(version, instr(version, ':') + 1) AS INTEGER), state, item, attempts, last_error"
            " FROM acquisitions"
        )
        conn.execute("DROP TABLE acquisitions")
    store.close()

    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "recorder_files" not in tables
        migrated = store.conn.execute("SELECT COUNT(*) FROM acquisitions WHERE state='sealed'").fetchone()[0]
        assert migrated == len(first.items)
        acquired_before = sum(1 for e in store.ledger.entries() if e.type == "acquired")
        second = await VolumeOffload(store, config_factory(), session_info(), volume).run()
        assert second.outcome is OffloadOutcome.DONE
        assert sorted(second.items) == sorted(first.items), "the same items, not new ones"
        assert sum(1 for e in store.ledger.entries() if e.type == "acquired") == acquired_before
        assert second.wiped == len(first.items) and volume_hashes(volume) == {}
        assert verify_store(store.layout.root).ok
    finally:
        store.close()
