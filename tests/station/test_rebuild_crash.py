"""Kill -9 while a damaged stored copy is being re-acquired from its recorder.

The re-acquisition writes tmp/<item>.part; a station killed in the middle leaves it behind. `edge verify`
must tell that file (named on the ledger before it was written, by a re-acquisition nothing closed) from
a file planted in tmp/; the next start discards it, on the ledger, and nothing else; the next docking
re-acquires the item.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome, VolumeOffload
from edge.verify.station import verify_store
from simulators.recorder.volume import mount_volume
from tests.mounting import require_fuse, require_volume_mounts

from .conftest import make_config, populate_recorder_volume, session_info
from .harness import simulated_station

REPO = Path(__file__).resolve().parents[2]
# The station process: one docking of the mounted volume, in a process of its own to be killed.
DOCKING = """
import asyncio, sys
from pathlib import Path
from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.sources.usb.offload import VolumeOffload
from tests.station.conftest import make_config, session_info
root, volume = Path(sys.argv[1]), Path(sys.argv[2])
store = StationStore(root / "store", "TEST-STATION")
config = make_config(root, wipe={"policy": "after-verify"})
asyncio.run(VolumeOffload(store, config, session_info(), volume).run())
"""


def keep_files(root: Path) -> StationConfig:
    return make_config(root, wipe={"policy": "never"})


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _kill_when_written(child: subprocess.Popen[bytes], part: Path, timeout_s: float = 60) -> None:
    """SIGKILL the child once it has written into `part` (the file offers no change signal to await)."""
    deadline = time.monotonic() + timeout_s
    while not (part.is_file() and part.stat().st_size > 0):
        assert child.poll() is None, f"the docking ended ({child.returncode}) before it re-acquired"
        assert time.monotonic() < deadline, f"{part} never appeared"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


async def test_sigkill_during_a_reacquisition_leaves_a_temp_copy_verify_accounts_for_and_start_discards(
    tmp_path: Path,
) -> None:
    require_volume_mounts()
    require_fuse()
    backing = populate_recorder_volume(tmp_path / "backing", files=2, file_mb=1.5, seed=5)
    bay = tmp_path / "media" / "ZFY_3300001"
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        with mount_volume(backing, bay) as volume:
            first = await VolumeOffload(store, keep_files(tmp_path), session_info(), volume.mount_point).run()
        assert first.outcome is OffloadOutcome.DONE, first.errors
        row = store.conn.execute("SELECT item, path, size FROM items WHERE sealed_in_file=1").fetchone()
        item, stored, size = row["item"], tmp_path / "store" / row["path"], int(row["size"])
        other = store.conn.execute("SELECT item FROM items WHERE item != ?", (item,)).fetchone()[0]
    finally:
        store.close()
    _flip(stored, size // 2)  # the stored copy rots; the recorder still holds the file
    part = tmp_path / "store" / "tmp" / f"{item}.part"

    # The docking finds the rot and re-acquires from a slow volume; the station is killed mid-copy.
    with mount_volume(backing, bay, rate_limit_bytes_per_s=1_000_000) as volume:
        child = subprocess.Popen([sys.executable, "-c", DOCKING, str(tmp_path), str(volume.mount_point)],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.to_thread(_kill_when_written, child, part)
    assert part.is_file(), "the killed re-acquisition left its temp copy"
    planted = [tmp_path / "store" / "tmp" / f"{other}.part", tmp_path / "store" / "tmp" / "notes.txt"]
    for path in planted:
        path.write_bytes(b"not the station's")

    report = verify_store(tmp_path / "store")
    named = [str(p) for p in report.problems]
    assert any(f"item {item}" in p for p in named), "the rotted copy is still a problem"
    assert not any(f"tmp/{item}.part" in p for p in named), named
    assert any(f"tmp/{item}.part" in n and "re-acquisition" in n for n in report.notes), report.notes
    # The control: files the station did not write in tmp/ are still reported as planted.
    assert all(any(f"tmp/{p.name}" in n and "planted" in n for n in named) for p in planted), named

    # The next start discards its own temp copy, on the ledger, and nothing else.
    async with simulated_station(tmp_path, []) as station:
        assert station.agent.store is not None
        closed = [e for e in station.agent.store.ledger.entries(item=item)
                  if e.type == "error" and e.data.get("stage") == "reacquire"]
    assert not part.exists() and all(p.exists() for p in planted)
    assert len(closed) == 1 and "interrupted" in closed[0].data["reason"]
    for path in planted:
        path.unlink()

    # The next docking re-acquires the item; the store verifies again.
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        with mount_volume(backing, bay) as volume:
            again = await VolumeOffload(store, keep_files(tmp_path), session_info(), volume.mount_point).run()
        assert again.outcome is OffloadOutcome.DONE, again.errors
        assert [e.type for e in store.ledger.entries(item=item)].count("reacquired") == 1
    finally:
        store.close()
    assert verify_store(tmp_path / "store").ok
