"""A corpus of real media made by ffmpeg: what recorders write, and what the in-process readers must
leave to ffprobe."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y"]


def _video(size: str, rate: str = "25", seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _tone(rate: int, seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}"]


X264 = ["-c:v", "libx264", "-preset", "ultrafast"]
X265 = ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none"]

# name -> ffmpeg arguments between the common prefix and the output file
UNDERSTOOD: dict[str, list[str]] = {
    "h264-1080p-cropped-aac48k.mp4": [
        *_video("1920x1080", "30", 1.3), *_tone(48000, 1.3), *X264, "-c:a", "aac",
    ],
    "h264-high-480p-aac44k-created.mp4": [
        *_video("854x480", "25", 2.07), *_tone(44100, 2.07), *X264, "-profile:v", "high", "-c:a", "aac",
        "-ac", "2", "-metadata", "creation_time=2025-03-04T05:06:07Z",
    ],
    "h264-baseline-ntsc-faststart.mp4": [
        *_video("640x360", "30000/1001", 1.5), *X264, "-profile:v", "baseline",
        "-video_track_timescale", "90000", "-movflags", "+faststart",
    ],
    "h264-interlaced.mp4": [*_video("720x576"), "-vf", "interlace", *X264, "-flags", "+ildct+ilme"],
    "h264-1366-odd-width.mp4": [*_video("1366x768"), *X264],
    "h264-444.mp4": [*_video("1280x720"), *X264, "-pix_fmt", "yuv444p"],
    "hevc-720p-hvc1.mp4": [*_video("1280x720"), *X265, "-tag:v", "hvc1"],
    "hevc-1080p-hev1.mp4": [*_video("1920x1080"), *X265],
    "quicktime-aac32k.mov": [*_video("1280x720"), *_tone(32000), *X264, "-c:a", "aac", "-f", "mov"],
    "aac-only.m4a": [*_tone(48000, 3.3), "-c:a", "aac"],
    "photo-420.jpg": [*_video("1280x720", "1"), "-frames:v", "1"],
    "photo-444-odd.jpg": [*_video("1001x667", "1"), "-frames:v", "1", "-pix_fmt", "yuvj444p"],
    "photo-422.jpg": [*_video("640x480", "1"), "-frames:v", "1", "-pix_fmt", "yuvj422p"],
    "voice-s16.wav": [*_tone(16000, 2.5), "-c:a", "pcm_s16le"],
    "voice-u8.wav": [*_tone(8000, 1.2345), "-c:a", "pcm_u8"],
    "stereo-s24-extensible.wav": [*_tone(44100, 0.7), "-ac", "2", "-c:a", "pcm_s24le"],
    "float32-extensible.wav": [*_tone(22050, 1.9), "-c:a", "pcm_f32le"],
    "six-channels-extensible.wav": [*_tone(48000), "-ac", "6", "-c:a", "pcm_s16le"],
    "alaw.wav": [*_tone(8000, 3), "-c:a", "pcm_alaw"],
    "mulaw.wav": [*_tone(8000, 3), "-c:a", "pcm_mulaw"],
}
# Files the in-process readers refuse (ffprobe answers), with why.
LEFT_TO_FFPROBE: dict[str, list[str]] = {
    # AAC-LC at 24 kHz or less may carry implicit SBR, which only decoding shows.
    "aac16k.mp4": [*_video("1280x720"), *_tone(16000), *X264, "-c:a", "aac"],
    "mpeg4-part2.mp4": [*_video("320x240"), "-c:v", "mpeg4"],
    "fragmented.mp4": [*_video("320x240"), *X264, "-movflags", "frag_keyframe+empty_moov"],
    "adpcm.wav": [*_tone(8000, 3), "-c:a", "adpcm_ima_wav"],
    "picture.png": [*_video("320x240", "1"), "-frames:v", "1", "-c:v", "png", "-f", "image2"],
}


def _make(directory: Path, recipes: dict[str, list[str]]) -> dict[str, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg is needed to make the media corpus")
    made = {}
    for name, args in recipes.items():
        target = directory / name
        subprocess.run([*FFMPEG, *args, str(target)], check=True, timeout=120)
        made[name] = target
    return made


@pytest.fixture(scope="session")
def understood_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make(tmp_path_factory.mktemp("media-understood"), UNDERSTOOD)


@pytest.fixture(scope="session")
def ffprobe_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make(tmp_path_factory.mktemp("media-ffprobe"), LEFT_TO_FFPROBE)
