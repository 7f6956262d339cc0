"""A stored copy that rotted while the recorder still holds the file is re-acquired (issue 7, 1.9).

Through real mounts of a simulated recorder: the rot is found (by `edge verify`, by the docking's
check of a file proven the same by its hash, by the check before erasing), put on the ledger, and the
stored artefact rebuilt from the recorder's file, byte for byte what was sealed, with a `reacquired`
entry; only then is the recorder's file erased. A recorder that no longer holds the bytes is never
used to "repair" anything (control).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store
from tests.mounting import require_volume_mounts
from tests.service.processes import EDGE

from .conftest import Dock, session_info, volume_hashes


def _entries(store: StationStore, item: str) -> list[Any]:
    return [e for e in store.ledger.entries() if e.item == item]


def _embedded_item(store: StationStore) -> tuple[str, Path, int]:
    row = store.conn.execute(
        "SELECT item, path, size FROM items WHERE sealed_in_file=1 ORDER BY item LIMIT 1"
    ).fetchone()
    return row["item"], store.layout.root / row["path"], int(row["size"])


def _flip(path: Path, offset: int) -> bytes:
    """Rot one byte of a stored file; returns the bytes it had."""
    before = path.read_bytes()
    data = bytearray(before)
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    return before


async def test_rot_found_by_edge_verify_is_reacquired_from_the_recorder_at_the_next_docking(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    require_volume_mounts()
    with dock() as root:
        await VolumeOffload(store, config_factory(wipe={"policy": "never"}), session_info(), root).run()
    item, stored, size = _embedded_item(store)
    sealed = _flip(stored, size // 2)

    audit = subprocess.run([str(EDGE), "verify", str(store.layout.root)], capture_output=True, text=True,
                           timeout=120)
    assert audit.returncode == 1 and f"FAIL item {item}" in audit.stdout, audit.stdout

    with dock() as root:
        result = await VolumeOffload(
            store, config_factory(wipe={"policy": "after-verify"}), session_info(), root
        ).run()
    assert result.outcome is OffloadOutcome.DONE, result.errors
    assert stored.read_bytes() == sealed, "the sealed artefact is back, byte for byte"
    entries = _entries(store, item)
    found = [e for e in entries if e.type == "error" and e.data.get("stage") == "stored copy"]
    again = [e for e in entries if e.type == "reacquired"]
    assert len(found) == 1 and found[0].data["found_by"] == "docking check"
    assert len(again) == 1 and again[0].seq > found[0].seq
    assert again[0].data["sha256"] == store.conn.execute(
        "SELECT sha256 FROM items WHERE item=?", (item,)).fetchone()[0]
    assert again[0].data["source_reread"] is True and again[0].data["embedded"] is True
    wiped = [e for e in entries if e.type == "wiped"]
    assert wiped and wiped[0].seq > again[0].seq, "erased only once the stored copy is whole again"
    assert volume_hashes(backing) == {}, "every file erased, the repaired one included"
    # Control: the items whose copies were intact were not re-acquired.
    assert [e.item for e in store.ledger.entries() if e.type == "reacquired"] == [item]
    assert verify_store(store.layout.root).ok


async def test_a_damaged_evidence_box_is_found_before_erasing_and_rebuilt(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    """The original prefix is intact (the docking's hash check passes), the manifest box is not."""
    require_volume_mounts()
    with dock() as root:
        await VolumeOffload(store, config_factory(wipe={"policy": "never"}), session_info(), root).run()
    item, stored, _ = _embedded_item(store)
    sealed = _flip(stored, stored.stat().st_size - 40)  # inside the signed manifest in the trailing box
    with dock() as root:
        result = await VolumeOffload(
            store, config_factory(wipe={"policy": "after-verify"}), session_info(), root
        ).run()
    assert stored.read_bytes() == sealed
    found = [e for e in _entries(store, item) if e.type == "error" and e.data.get("stage") == "stored copy"]
    assert [e.data["found_by"] for e in found] == ["check before erasing"]
    assert [e.type for e in _entries(store, item)][-2:] == ["reacquired", "wiped"]
    assert volume_hashes(backing) == {} and result.outcome is OffloadOutcome.DONE
    assert verify_store(store.layout.root).ok


async def test_control_a_recorder_that_no_longer_holds_the_bytes_repairs_nothing(
    store: StationStore, backing: Path, dock: Dock, config_factory: Callable[..., StationConfig]
) -> None:
    """Stored copy rotted and the recorder's file rewritten too (same name, size and mtime): nothing
    is rebuilt from bytes that are not the item's; the recorder's file is another recording."""
    require_volume_mounts()
    with dock() as root:
        await VolumeOffload(store, config_factory(wipe={"policy": "never"}), session_info(), root).run()
    item, stored, size = _embedded_item(store)
    _flip(stored, size // 2)
    rotten = stored.read_bytes()
    name = store.conn.execute("SELECT manifest FROM items WHERE item=?", (item,)).fetchone()[0]
    original = next(p for p in backing.rglob("*.MP4") if f'"{p.name}"' in name)
    mtime = original.stat().st_mtime_ns
    _flip(original, 10)
    os.utime(original, ns=(mtime, mtime))
    after_verify = config_factory(wipe={"policy": "after-verify"})
    with dock() as root:
        await VolumeOffload(store, after_verify, session_info(), root).run()
    assert stored.read_bytes() == rotten, "never rebuilt from bytes that are not the item's"
    assert not [e for e in _entries(store, item) if e.type in ("reacquired", "wiped")]
    state = store.conn.execute("SELECT state FROM acquisitions WHERE item=?", (item,)).fetchone()[0]
    assert state == "superseded", "the recorder's file is another recording, acquired as a new item"
    assert not original.exists()
    problems = verify_store(store.layout.root).problems
    assert [p.where for p in problems] == [f"item {item}"], "the rot stays named by edge verify"
