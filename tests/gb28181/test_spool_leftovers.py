"""What the download scheduler removes from its spool at start (edge.sources.gb28181.scheduler
`_clear_spool`), beyond review 16's case: only its own names, only regular files directly in the spool,
never through a symlink (neither a symlinked file nor a symlinked spool). Each refusal beside its control."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181 import DeviceGone
from edge.sources.gb28181.scheduler import SPOOL_LEFTOVER, DeviceProgress, GbDownloadScheduler
from tests.gb28181.media_sender import HAVE_FFMPEG, make_source, ps_packs
from tests.prerequisites import require

HEX = "0123456789abcdef0123456789abcdef"


class Platform:
    def __init__(self) -> None:
        self.registry: dict[str, Any] = {}

    def add_online_listener(self, _callback: Any) -> None:
        pass


def _clear(spool: Path) -> None:
    policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
    GbDownloadScheduler(Platform(), policy, lambda: None,  # type: ignore[arg-type]
                        spool=spool, station_id="TEST-STATION", case={})._clear_spool()


def test_only_the_schedulers_own_names_go(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    ours = [f"download-{HEX}.ps", f"download-{HEX}.mp4", f".download-{HEX}.mp4.nut",
            f".download-{HEX}.mp4.part.mp4", f".download-{HEX}.mp4.audio"]
    others = ["download-XYZ.ps", f"download-{HEX}.ps.bak", f"x-download-{HEX}.ps", "notes.txt",
              f".download-{HEX}.ps.nut", f"download-{HEX[:-1]}.ps"]
    for name in ours + others:
        (spool / name).write_bytes(b"x")
    (spool / f"download-{'f' * 32}.mp4").mkdir()  # a directory of our name: not a file, stays
    _clear(spool)
    assert sorted(p.name for p in spool.iterdir()) == sorted([*others, f"download-{'f' * 32}.mp4"])
    assert all(SPOOL_LEFTOVER.fullmatch(n) for n in ours)
    assert not any(SPOOL_LEFTOVER.fullmatch(n) for n in others)


def test_a_symlink_of_our_name_is_left_and_never_its_target_removed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    evidence = tmp_path / "evidence.mp4"
    evidence.write_bytes(b"keep me")
    (spool / f"download-{HEX}.ps").symlink_to(evidence)
    _clear(spool)
    assert evidence.read_bytes() == b"keep me"


def test_a_symlinked_spool_is_not_cleared(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"download-{HEX}.ps").write_bytes(b"not the spool's")
    link = tmp_path / "spool"
    link.symlink_to(elsewhere)
    _clear(link)
    assert (elsewhere / f"download-{HEX}.ps").exists()
    os.unlink(link)
    link.mkdir()  # the control: a real spool with the same file is cleared
    (link / f"download-{HEX}.ps").write_bytes(b"x")
    _clear(link)
    assert list(link.iterdir()) == []


def test_a_missing_spool_is_nothing_to_clear(tmp_path: Path) -> None:
    _clear(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


CRASHING_CONVERSION = """
import asyncio, os, signal, sys
from pathlib import Path
from edge.gb28181 import convert

real_run = convert._run

async def crash_at_the_second_ffmpeg(argv, timeout_s, **kw):
    if any(a.endswith(".nut") for a in argv):  # the NUT -> MP4 run: the power goes
        os.kill(os.getpid(), signal.SIGKILL)
    return await real_run(argv, timeout_s, **kw)

convert._run = crash_at_the_second_ffmpeg
raw = Path(sys.argv[1])
asyncio.run(convert.convert_recording(raw, raw.with_suffix(".mp4"), display="rec"))
"""


def test_what_a_crashed_real_conversion_leaves_is_removed(tmp_path: Path) -> None:
    """The real conversion (real ffmpeg, convert.py's own temp names) killed as its second ffmpeg starts;
    what it left in the spool goes at the next start, and nothing else."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media = make_source(tmp_path / "src", Codec.H264, seconds=1)
    spool = tmp_path / "spool"
    spool.mkdir()
    raw = spool / f"download-{HEX}.ps"
    raw.write_bytes(b"".join(pack for pack, _ in ps_packs(media)))
    (spool / "operator-notes.txt").write_text("not ours")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_CONVERSION, str(raw)], cwd=Path.cwd(),
                             capture_output=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    left = sorted(p.name for p in spool.iterdir())
    assert f".download-{HEX}.mp4.nut" in left, left  # the control: the crash did leave temp files
    _clear(spool)
    assert sorted(p.name for p in spool.iterdir()) == ["operator-notes.txt"]


async def test_what_the_start_removed_is_one_ledger_entry_written_once_the_pipeline_is_there(
        tmp_path: Path) -> None:
    """Review 17 finding 12: removed received media is on the record (count, bytes, names), once; the
    pipeline made after the scheduler's start gets it at the first pass."""
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        spool = tmp_path / "spool"
        spool.mkdir()
        (spool / f"download-{HEX}.ps").write_bytes(b"\x00" * 1000)
        (spool / f".download-{HEX}.mp4.nut").write_bytes(b"\x00" * 10)
        (spool / "notes.txt").write_bytes(b"x")
        pipeline: list[IngestPipeline | None] = [None]
        policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True,
                                 when="on-registration")
        scheduler = GbDownloadScheduler(Platform(), policy, lambda: pipeline[0],  # type: ignore[arg-type]
                                        spool=spool, station_id="TEST-STATION", case={},
                                        check_interval_s=3600)
        task = asyncio.ensure_future(scheduler.run())
        async with asyncio.timeout(10):
            while (spool / f"download-{HEX}.ps").exists():
                await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [p.name for p in spool.iterdir()] == ["notes.txt"]
        assert not [e for e in store.ledger.entries() if e.type == "error"]  # no pipeline yet: held
        pipeline[0] = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        for _ in range(2):
            with pytest.raises(DeviceGone):  # the device is not there: the pass ends after the entry
                await scheduler._pass("34020000001320000001", DeviceProgress())
        [entry] = [e.data for e in store.ledger.entries() if e.type == "error"]
        assert entry["stage"] == "spool" and entry["files"] == 2 and entry["bytes"] == 1010
        assert entry["raw_ps_files"] == 1 and entry["raw_ps_bytes"] == 1000
        assert sorted(entry["names"]) == sorted([f"download-{HEX}.ps", f".download-{HEX}.mp4.nut"])
    finally:
        store.close()
