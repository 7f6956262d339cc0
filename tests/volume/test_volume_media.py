"""Media made with ffmpeg: exact sizes, ffprobe-valid, moov at the end, seeded, cache safety."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from simulators.recorder import media
from simulators.recorder.media import MediaError, make_jpg, make_mp4, make_wav


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True, check=True, timeout=60,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def codecs(path: Path) -> list[str]:
    streams = ffprobe(path)["streams"]
    assert isinstance(streams, list)
    return sorted(str(s["codec_name"]) for s in streams)


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        assert size >= 8, f"bad box size {size} at {offset}"
        boxes.append(kind.decode())
        offset += size
    assert offset == len(data)
    return boxes


@pytest.mark.parametrize("size_bytes", [12_000, 200_000, 1024 * 1024, 3 * 1024 * 1024 + 7])
def test_mp4_exact_size_valid_and_not_faststart(tmp_path: Path, size_bytes: int) -> None:
    path = tmp_path / "clip.mp4"
    make_mp4(path, size_bytes=size_bytes, seed=11)
    assert path.stat().st_size == size_bytes
    assert codecs(path) == ["aac", "h264"]
    boxes = top_level_boxes(path)
    assert boxes.index("mdat") < boxes.index("moov"), boxes  # written live: moov last
    # Decodes end to end without errors (not only the header parses).
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                            capture_output=True, check=True, timeout=120)
    assert decode.stderr == b""


def test_mp4_seeds_differ_and_repeat(tmp_path: Path) -> None:
    a, b, a2 = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "a2.mp4"
    make_mp4(a, size_bytes=300_000, seed=1)
    make_mp4(b, size_bytes=300_000, seed=2)
    make_mp4(a2, size_bytes=300_000, seed=1)
    assert a.read_bytes() != b.read_bytes()
    assert a.read_bytes() == a2.read_bytes()


def test_mp4_creation_time(tmp_path: Path) -> None:
    path = tmp_path / "t.mp4"
    make_mp4(path, size_bytes=100_000, seed=3, creation_time=datetime(2024, 6, 3, 8, 5, 9))
    fmt = ffprobe(path)["format"]
    assert isinstance(fmt, dict)
    assert fmt["tags"]["creation_time"] == "2024-06-03T08:05:09.000000Z"


@pytest.mark.parametrize("size_bytes", [0, -1, 100, 4000])
def test_mp4_too_small(tmp_path: Path, size_bytes: int) -> None:
    with pytest.raises(MediaError):
        make_mp4(tmp_path / "x.mp4", size_bytes=size_bytes, seed=0)
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_jpg_and_wav(tmp_path: Path) -> None:
    make_jpg(tmp_path / "a.jpg", seed=1)
    make_jpg(tmp_path / "b.jpg", seed=2)
    assert codecs(tmp_path / "a.jpg") == ["mjpeg"]
    assert (tmp_path / "a.jpg").read_bytes() != (tmp_path / "b.jpg").read_bytes()
    make_wav(tmp_path / "a.wav", seconds=2.5, seed=1)
    make_wav(tmp_path / "b.wav", seconds=2.5, seed=2)
    assert codecs(tmp_path / "a.wav") == ["pcm_s16le"]
    fmt = ffprobe(tmp_path / "a.wav")["format"]
    assert isinstance(fmt, dict) and float(fmt["duration"]) == pytest.approx(2.5, abs=0.01)
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "b.wav").read_bytes()
    with pytest.raises(MediaError):
        make_wav(tmp_path / "c.wav", seconds=0, seed=1)


def test_argv_builders_are_plain_lists(tmp_path: Path) -> None:
    argv = media.loop_copy_argv(tmp_path / "t.mp4", tmp_path / "o.mp4", duration_s=3.0, seed=5,
                                creation_time=None)
    assert argv[argv.index("-c") + 1] == "copy"  # never a re-encode
    assert "-stream_loop" in argv and "+faststart" not in " ".join(argv)
    assert not any("creation_time" in a for a in argv)
    recipe = media._tier_recipe(50 * 1024 * 1024, 3)
    assert recipe.tier == "large"
    assert media.template_encode_argv(recipe, tmp_path / "o.mp4") != media.template_encode_argv(
        media._tier_recipe(50 * 1024 * 1024, 4), tmp_path / "o.mp4")


def test_template_cache_reused_and_corruption_repaired(tmp_path: Path, media_cache: Path) -> None:
    make_mp4(tmp_path / "a.mp4", size_bytes=50_000, seed=5)
    templates = sorted(media_cache.glob("template-tiny-*.mp4"))
    assert templates
    target = templates[0]
    first_bytes = target.read_bytes()
    media._templates.clear()  # as in a fresh process
    target.write_bytes(b"corrupt")
    for seed in range(media.TEMPLATE_VARIANTS):
        make_mp4(tmp_path / f"s{seed}.mp4", size_bytes=50_000, seed=seed)
    assert target.read_bytes() == first_bytes  # re-encoded, deterministically


def test_unsafe_cache_dirs_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(media.CACHE_ENV, str(shared))
    with pytest.raises(MediaError, match="writable by group/others"):
        media.cache_dir()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv(media.CACHE_ENV, str(link))
    with pytest.raises(MediaError, match="real directory"):
        media.cache_dir()
    fresh = tmp_path / "a" / "b"
    monkeypatch.setenv(media.CACHE_ENV, str(fresh))
    assert media.cache_dir() == fresh
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_ffmpeg_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media, "jpg_argv", lambda out, seed: ["-f", "lavfi", "-i", "nosuchsource", str(out)])
    with pytest.raises(MediaError, match="ffmpeg exited with"):
        make_jpg(tmp_path / "x.jpg", seed=1)
    assert not os.listdir(tmp_path)
