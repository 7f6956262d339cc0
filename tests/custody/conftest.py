"""Fixtures for the custody tests: keys, a WAL-mode state database, real MP4 files made by ffmpeg."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.ledger import Ledger

STATION_ID = "3201000001"

FFMPEG_VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "faststart": ["-movflags", "+faststart"],
    "fragmented": ["-movflags", "frag_keyframe+empty_moov"],
}


@pytest.fixture(scope="session")
def station_key() -> StationKey:
    return StationKey.generate()


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("PRAGMA journal_mode=WAL")
    Ledger.create_schema(db)
    db.commit()
    yield db
    db.close()


@pytest.fixture
def ledger(conn: sqlite3.Connection, station_key: StationKey) -> Ledger:
    """A ledger signing a checkpoint only every 64 entries (the largest cadence in use), so that the tests
    see what the hash chain catches between checkpoints; the default (every entry) is tested by name."""
    return Ledger(conn, STATION_ID, station_key, checkpoint_every=64)


@pytest.fixture(scope="session")
def mp4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small MP4 per muxer variant, made once per session (about a second in total)."""
    assert shutil.which("ffmpeg"), "ffmpeg must be installed (make setup installs it)"
    out = tmp_path_factory.mktemp("mp4")
    for name, flags in FFMPEG_VARIANTS.items():
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=d=1:s=160x120",
                "-f",
                "lavfi",
                "-i",
                "sine=d=1",
                "-c:v",
                "libx264",
                "-c:a",
                "aac",
                *flags,
                str(out / f"{name}.mp4"),
            ],
            check=True,
            timeout=60,
        )
    return out


@pytest.fixture
def mp4_copy(mp4_dir: Path, tmp_path: Path) -> Any:
    """Factory: a private copy of one variant, safe to seal or damage."""

    def make(variant: str = "plain") -> Path:
        target = tmp_path / f"{variant}-{uuid.uuid4().hex[:6]}.mp4"
        shutil.copyfile(mp4_dir / f"{variant}.mp4", target)
        return target

    return make


@pytest.fixture
def make_manifest() -> Any:
    """Factory: an unsigned manifest for some bytes, shaped like the pipeline's."""
    return sample_manifest


def sample_manifest(data: bytes, item: str | None = None) -> dict[str, Any]:
    """A manifest shaped like the pipeline's (DESIGN.md "Evidence item") for ``data``."""
    return {
        "format": "evidence-edge/manifest/1",
        "item": item or str(uuid.uuid4()),
        "sha256": sha256_hex(data),
        "size": len(data),
        "media": {"container": "mov,mp4,m4a,3gp,3g2,mj2", "duration_s": 1.0, "codecs": ["h264", "aac"]},
        "original": {
            "name": "20240501_081500_000001.MP4",
            "path": "DCIM/100MEDIA/20240501_081500_000001.MP4",
            "device_mtime": "2024-05-01T00:16:00.000000Z",
        },
        "source": {
            "kind": "usb",
            "station": STATION_ID,
            "bay": 3,
            "device_serial": "DSJ-A1-000123",
            "officer_no": "012345",
            "officer_name": "张三",
            "unit_code": "320100000000",
            "unit_name": "南京市公安局某派出所",
        },
        "time": {
            "recorded_start": "2024-05-01T08:15:00",
            "device_clock_offset_ms": -1250,
            "acquired_utc": "2024-05-01T09:00:00.123456Z",
            "station_clock_synchronised": True,
        },
        "case": {
            "case_number": "A3201000000002024050001",
            "location": "中山路",
            "collector": "张三(012345)",
            "subject": "现场执法过程",
            "important": False,
            "category": "traffic",
            "retention": "6-months",
        },
        "chain": {"seq": 7, "entry_hash": "ab" * 32},
    }
