"""Review 16: after a crash, the scheduler's start (`_clear_spool`) removes only `download-*.ps` and
`download-*.mp4`. A crash during the conversion (edge.gb28181.convert) leaves its temp files beside them:
`.download-<id>.mp4.nut` (the whole video, re-muxed), `.download-<id>.mp4.part.mp4` and
`.download-<id>.mp4.audio`. convert_recording discards those only when the same output is converted again,
but the next attempt is a new download under a new uuid, so nothing ever removes them: each crash in a
conversion leaks about a recording's size in the store's directory, forever (edge verify does not look
inside the spool either)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edge.sources.gb28181.scheduler import GB28181_SPOOL_DIR, GbDownloadScheduler

STEM = "download-0123456789abcdef0123456789abcdef"


class Platform:
    def __init__(self) -> None:
        self.registry: dict[str, Any] = {}

    def add_online_listener(self, _callback: Any) -> None:
        pass


def _scheduler(spool: Path) -> GbDownloadScheduler:
    policy = SimpleNamespace(wants_device=lambda _d: True, may_download_now=lambda _n: True)
    return GbDownloadScheduler(Platform(), policy, lambda: None,  # type: ignore[arg-type]
                               spool=spool, station_id="TEST-STATION", case={})


def _crashed_conversion(spool: Path) -> dict[str, Path]:
    """The spool as a power cut during the conversion's first ffmpeg left it."""
    spool.mkdir(mode=0o700)
    files = {
        "raw": spool / f"{STEM}.ps",
        "nut": spool / f".{STEM}.mp4.nut",
        "part": spool / f".{STEM}.mp4.part.mp4",
        "audio": spool / f".{STEM}.mp4.audio",
    }
    for path in files.values():
        path.write_bytes(b"\x00" * 4096)
    return files


def test_a_crashed_conversions_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    files = _crashed_conversion(tmp_path / GB28181_SPOOL_DIR)
    _scheduler(tmp_path / GB28181_SPOOL_DIR)._clear_spool()
    left = sorted(p.name for p in (tmp_path / GB28181_SPOOL_DIR).iterdir())
    assert left == [], f"left in the spool after restart: {left} of {len(files)}"


def test_control_the_interrupted_raw_ps_is_removed_at_start(tmp_path: Path) -> None:
    files = _crashed_conversion(tmp_path / GB28181_SPOOL_DIR)
    _scheduler(tmp_path / GB28181_SPOOL_DIR)._clear_spool()
    assert not files["raw"].exists()
