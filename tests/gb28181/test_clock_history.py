"""The device clocks' epochs kept across restarts (review 17, finding 11): a small file per device in the
store, written atomically, read without trusting it; a file that cannot be used is an error entry and the
device's earlier recordings get no offset (never the one measured in this run). Real files; the last two
tests through the real platform and SIP sockets."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.gb28181 import clock_history
from edge.gb28181.clock_history import ClockHistoryError, decode, encode, load, save
from edge.gb28181.platform import GbPlatform
from edge.gb28181.registry import MAX_CLOCK_EPOCHS, ClockEpoch
from edge.ingest.store import StationStore
from edge.verify.station import verify_store

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000031"
PASSWORD = "12345678"
T = 1_764_900_000.0
EPOCHS = [ClockEpoch(-7200.0, T - 7200.0), ClockEpoch(0.4, None, T)]


def test_a_history_is_saved_and_read_back(tmp_path: Path) -> None:
    directory = tmp_path / "gb28181-clocks"
    save(directory, DEVICE, EPOCHS, None)
    assert (directory / f"{DEVICE}.json").stat().st_mode & 0o077 == 0
    assert load(directory, DEVICE) == (EPOCHS, None)
    assert [p.name for p in directory.iterdir()] == [f"{DEVICE}.json"]  # no temp file left
    assert load(directory, "34020000001320000099") is None  # control: a device never set has none


@pytest.mark.parametrize("damage", [
    b"not json", b"[]", b'{"version": 1}',
    json.dumps({"version": 2, "device_id": DEVICE, "history_from_s": None, "epochs": []}).encode(),
    encode("34020000001320000099", EPOCHS, None),  # another device's
    encode(DEVICE, EPOCHS, None).replace(b"-7200.0", b"NaN"),
    encode(DEVICE, EPOCHS, None).replace(b"-7200.0", b'"-7200"'),
    encode(DEVICE, list(reversed(EPOCHS)), None),  # the open epoch first
    json.dumps({"version": 1, "device_id": DEVICE, "history_from_s": None,
                "epochs": [{"offset_s": 1.0, "started_at_device_s": None, "ended_at_device_s": None}]
                * (MAX_CLOCK_EPOCHS + 1)}).encode(),
])
def test_a_damaged_history_is_refused(damage: bytes) -> None:
    with pytest.raises(ClockHistoryError):
        decode(DEVICE, damage)


def test_control_what_encode_writes_decodes() -> None:
    assert decode(DEVICE, encode(DEVICE, EPOCHS, T)) == (EPOCHS, T)


def test_a_large_file_a_fifo_and_a_symlink_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / f"{DEVICE}.json"
    path.write_bytes(b" " * (clock_history.MAX_FILE_BYTES + 1))
    with pytest.raises(ClockHistoryError, match="larger"):
        load(tmp_path, DEVICE)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ClockHistoryError, match="FIFO"):
        load(tmp_path, DEVICE)
    path.unlink()
    (tmp_path / "elsewhere.json").write_bytes(encode(DEVICE, EPOCHS, None))
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ClockHistoryError, match="symbolic link"):
        load(tmp_path, DEVICE)


def test_a_device_id_that_is_not_20_digits_names_no_file(tmp_path: Path) -> None:
    with pytest.raises(ClockHistoryError):
        save(tmp_path, "../../etc/passwd", EPOCHS, None)
    assert list(tmp_path.iterdir()) == []


# -- through the platform --------------------------------------------------------------------------------


def _beijing_now() -> datetime:
    return (datetime.now(UTC) + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)


async def _offset_of_an_earlier_recording(directory: Path, ledger: Ledger) -> tuple[int | None, str | None]:
    """A device 2 h behind registers with a platform whose history directory is as given; the offset given
    to a recording its clock stamped three hours ago (before this run)."""
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, time_sync=True),
                          record=ledger, clock_trusted=lambda: True, clock=FakeClock(),
                          clock_history_dir=directory)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port,
                              device_time=_beijing_now() - timedelta(hours=2)).start()
    try:
        assert (await device.register()).status == 200
        while platform._tasks:  # the clock measurement beside the registration
            await asyncio.gather(*list(platform._tasks))
        assert ledger.of("clock_measured")
        return platform.device_clock_reading(DEVICE, (_beijing_now() - timedelta(hours=5)).isoformat())
    finally:
        await device.close()
        await platform.close()


async def test_a_damaged_history_gives_earlier_recordings_no_offset_and_says_so(tmp_path: Path) -> None:
    directory = tmp_path / "gb28181-clocks"
    directory.mkdir()
    (directory / f"{DEVICE}.json").write_bytes(b"\x00garbage")
    ledger = Ledger()
    assert await _offset_of_an_earlier_recording(directory, ledger) == (None, "before-history")
    errors = [e for e in ledger.of("error") if "clock history" in e["reason"]]
    assert len(errors) == 1 and errors[0]["device_id"] == DEVICE and "garbage" not in errors[0]["reason"]


async def test_control_without_a_history_file_the_measured_clock_is_given(tmp_path: Path) -> None:
    ledger = Ledger()
    offset, unknown = await _offset_of_an_earlier_recording(tmp_path / "gb28181-clocks", ledger)
    assert unknown is None and offset is not None and abs(offset + 7_200_000) < 60_000
    assert not [e for e in ledger.of("error") if "clock history" in e["reason"]]


def test_edge_verify_knows_the_clock_history_directory(tmp_path: Path) -> None:
    """The station writes STORE/gb28181-clocks/ (CLOCK_HISTORY_DIR): a store verify is not failed by it;
    control: another directory planted beside it is."""
    store = StationStore(tmp_path / "store", "CLOCK-TEST")
    store.close()
    root = store.layout.root
    save(root / clock_history.CLOCK_HISTORY_DIR, DEVICE, EPOCHS, None)
    assert [p.where for p in verify_store(root).problems] == []
    (root / "gb28181-elsewhere").mkdir()
    assert [p.where for p in verify_store(root).problems] == ["file gb28181-elsewhere"]
