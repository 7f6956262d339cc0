"""populate_volume: a recorder's volume after a shift, real media, names and identity that parse back."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.usb.mass_storage import (
    SOURCE_PARAM_INI,
    parse_param_ini,
    parse_recorder_file_name,
    read_volume_identity,
)
from simulators.recorder.volume import MIB, VolumeError, populate_volume

IDENTITY: dict[str, Any] = {"device_serial": "1234567", "officer_no": "123456", "officer_name": "张三",
            "unit_code": "330100000000", "unit_name": "杭州市公安局西湖分局"}
START = datetime(2024, 6, 3, 8, 0, 0)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def probe_codec(path: Path) -> str:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json",
                          str(path)], capture_output=True, check=True, timeout=60)
    return ",".join(sorted(s["codec_name"] for s in json.loads(out.stdout)["streams"]))


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("vol") / "ZFY_1234567"
    return root, populate_volume(root, files=10, file_mb=0.2, seed=7, start=START, **IDENTITY)


def test_param_ini_as_devices_write_it(volume: tuple[Path, list[Path]]) -> None:
    root, _ = volume
    raw = (root / "PARAM.INI").read_bytes()
    assert raw.startswith(b"[ZFY]\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    assert "张三".encode("gbk") in raw
    identity = parse_param_ini(raw)
    assert identity.source == SOURCE_PARAM_INI
    assert {k: getattr(identity, k) for k in IDENTITY} == IDENTITY
    assert read_volume_identity(root) == identity


def test_layout_names_and_media(volume: tuple[Path, list[Path]]) -> None:
    root, files = volume
    assert len(files) == 10
    assert sorted(p for p in root.rglob("*") if p.is_file() and p.name != "PARAM.INI") == sorted(files)
    kinds = [p.suffix for p in files]
    assert kinds.count(".MP4") == 7 and kinds[0] == ".MP4"
    previous_seq, previous_time = 0, datetime.min
    videos = 0
    for path in files:
        parsed = parse_recorder_file_name(path.name)
        assert parsed is not None, path.name
        assert (parsed.officer_no, parsed.device_serial) == ("123456", "1234567")
        assert parsed.seq == previous_seq + 1 and parsed.recorded_at > previous_time
        previous_seq, previous_time = parsed.seq, parsed.recorded_at
        assert path.stat().st_mtime == parsed.recorded_at.timestamp()
        folder = {"MP4": "DCIM/100MEDIA", "JPG": "PHOTO", "WAV": "AUDIO"}[parsed.ext]
        assert path.parent == root / folder
        if parsed.ext == "MP4":
            assert parsed.important == (videos % 4 == 3)
            videos += 1
            assert path.stat().st_size == round(0.2 * MIB)
            assert probe_codec(path) == "aac,h264"
        else:
            assert not parsed.important
            assert probe_codec(path) == ("mjpeg" if parsed.ext == "JPG" else "pcm_s16le")
    assert parse_recorder_file_name(files[0].name).recorded_at == START  # type: ignore[union-attr]


def test_deterministic_per_seed(tmp_path: Path, volume: tuple[Path, list[Path]]) -> None:
    root, _ = volume
    again = tmp_path / "again"
    populate_volume(again, files=10, file_mb=0.2, seed=7, start=START, **IDENTITY)
    assert tree_digest(again) == tree_digest(root)
    other = tmp_path / "other"
    populate_volume(other, files=10, file_mb=0.2, seed=8, start=START, **IDENTITY)
    assert set(tree_digest(other).values()).isdisjoint(v for k, v in tree_digest(root).items()
                                                       if k != "PARAM.INI")


@pytest.mark.parametrize("files", [0, 1, 2, 3])
def test_few_files_still_have_video(tmp_path: Path, files: int) -> None:
    made = populate_volume(tmp_path, files=files, file_mb=0.05, seed=1, **IDENTITY)
    assert len(made) == files
    if files:
        assert any(p.suffix == ".MP4" for p in made)
    assert (tmp_path / "PARAM.INI").exists()


@pytest.mark.parametrize(
    "override",
    [
        {"device_serial": "12/4567"},
        {"officer_no": ""},
        {"unit_code": "33 01"},
        {"officer_name": "x" * 65},
        {"officer_name": "a\r\nDevNo=666"},  # would inject a key into PARAM.INI
        {"unit_name": "[ZHY]"},
        {"officer_name": "😀"},  # not representable in GBK
    ],
)
def test_bad_identity_refused(tmp_path: Path, override: dict[str, str]) -> None:
    with pytest.raises(VolumeError):
        populate_volume(tmp_path / "v", files=1, file_mb=0.05, seed=1, **{**IDENTITY, **override})
    assert not (tmp_path / "v").exists()


def test_bad_counts_refused(tmp_path: Path) -> None:
    with pytest.raises(VolumeError):
        populate_volume(tmp_path, files=-1, file_mb=1, seed=1, **IDENTITY)
    with pytest.raises(VolumeError):
        populate_volume(tmp_path, files=2, file_mb=0, seed=1, **IDENTITY)
