"""Real media files for simulated recorders, made with ffmpeg.

Recorders write H.264/AAC MP4 (moov at the end, as a device writing live does), JPG photos and WAV
audio. Evidence code must be exercised on files that real tools parse, so every file here is
ffprobe-valid; but encoding hundreds of MB per test would be far too slow. So a short noisy template
clip is encoded once per (size tier, variant), cached under a content-addressed name, and every MP4 is
made from it with `-stream_loop -1 -t T -c copy` (a remux, no re-encode). The exact target size is
then reached with a trailing ISO-BMFF `free` box of seeded bytes, which players and ffprobe skip.

Determinism: the same (size, seed, creation_time) gives the same bytes on the same ffmpeg build;
templates are cached per ffmpeg version, so a cache never mixes builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "EVIDENCE_EDGE_SIM_CACHE"
# Templates exist in a few variants so files of different seeds also differ in picture and sound,
# while the cache stays bounded (tiers x variants files).
TEMPLATE_VARIANTS = 8
TEMPLATE_DURATION_S = 2
# Below this size the 720p template's first key frame alone would overshoot the target.
LARGE_TIER_MIN_BYTES = 1024 * 1024
FREE_BOX_HEADER_BYTES = 8
_FFMPEG_TIMEOUT_S = 600.0
_STDERR_TAIL_LINES = 20


class MediaError(Exception):
    """Media could not be produced: ffmpeg missing or failing, bad arguments, unsafe cache."""


@dataclass(frozen=True)
class TemplateRecipe:
    """One cached template clip: what to encode."""

    tier: str
    width: int
    height: int
    video_bitrate: str
    noise_strength: int
    audio_rate_hz: int
    audio_channels: int
    audio_bitrate: str
    variant: int


@dataclass(frozen=True)
class TemplateClip:
    """A cached template and its packet table, from which the size of any looped cut is predicted."""

    path: Path
    size_bytes: int
    duration_s: float
    # (pts_s, size_bytes) of every audio and video packet, sorted by time.
    packets: tuple[tuple[float, int], ...]

    @property
    def overhead_per_packet_bytes(self) -> float:
        # Container bytes (sample tables, headers) per packet: amortises a fixed part too, so it
        # overestimates long cuts a little, which errs toward padding rather than a second remux.
        payload = sum(size for _, size in self.packets)
        return max(0.0, (self.size_bytes - payload) / max(1, len(self.packets)))

    def predicted_size(self, duration_s: float) -> int:
        """Bytes of `-stream_loop -1 -t duration_s -c copy` output, near enough to aim with."""
        loops, rest_s = divmod(duration_s, self.duration_s)
        payload = sum(size for _, size in self.packets)
        partial = [size for pts, size in self.packets if pts < rest_s]
        count = int(loops) * len(self.packets) + len(partial)
        return int(int(loops) * payload + sum(partial) + count * self.overhead_per_packet_bytes)


def _tier_recipe(size_bytes: int, variant: int) -> TemplateRecipe:
    if size_bytes >= LARGE_TIER_MIN_BYTES:
        # 720p at ~8 Mbit/s: close to what a body-worn camera writes, and noise keeps x264 from
        # compressing the test pattern down to nothing.
        return TemplateRecipe("large", 1280, 720, "8M", 12, 48000, 2, "128k", variant)
    return TemplateRecipe("tiny", 160, 90, "160k", 3, 16000, 1, "24k", variant)


def template_encode_argv(recipe: TemplateRecipe, out_path: Path) -> list[str]:
    """ffmpeg argv that encodes one template clip (pure; tested as a list)."""
    hue_deg = (recipe.variant * 360) // TEMPLATE_VARIANTS
    tone_hz = 400 + 110 * recipe.variant
    d = TEMPLATE_DURATION_S
    video_src = (
        f"testsrc2=size={recipe.width}x{recipe.height}:rate=25:duration={d},"
        f"hue=h={hue_deg},noise=alls={recipe.noise_strength}:allf=t:all_seed={recipe.variant + 1}"
    )
    audio_src = f"sine=frequency={tone_hz}:sample_rate={recipe.audio_rate_hz}:duration={d}"
    return [
        "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", video_src,
        "-f", "lavfi", "-i", audio_src,
        "-c:v", "libx264", "-preset", "veryfast" if recipe.tier == "tiny" else "ultrafast",
        "-b:v", recipe.video_bitrate, "-maxrate", recipe.video_bitrate, "-bufsize", recipe.video_bitrate,
        "-g", "25", "-pix_fmt", "yuv420p",
        # One thread: x264's rate control with frame threads gives different bytes now and then, and a
        # template must be the same on every run and machine (it is encoded once, so speed is moot).
        "-threads", "1",
        "-c:a", "aac", "-b:a", recipe.audio_bitrate, "-ac", str(recipe.audio_channels),
        "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
        "-f", "mp4", str(out_path),
    ]  # fmt: skip


def loop_copy_argv(
    template: Path, out_path: Path, *, duration_s: float, seed: int, creation_time: datetime | None
) -> list[str]:
    """ffmpeg argv that remuxes the looped template to `duration_s` without re-encoding (pure)."""
    argv = [
        "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-stream_loop", "-1", "-i", str(template),
        "-t", f"{duration_s:.3f}", "-c", "copy", "-map", "0",
        "-map_metadata", "-1", "-fflags", "+bitexact",
        "-metadata", f"comment=evidence-edge simulated recorder seed={seed}",
    ]  # fmt: skip
    if creation_time is not None:
        argv += ["-metadata", f"creation_time={_mp4_time(creation_time)}"]
    # No +faststart: a recorder writing live only knows the sample tables at the end.
    return [*argv, "-f", "mp4", str(out_path)]


def jpg_argv(out_path: Path, *, seed: int) -> list[str]:
    """ffmpeg argv for one 1280x720 JPG photo whose pixels depend on the seed (pure)."""
    rng = random.Random(f"jpg:{seed}")
    src = (
        f"testsrc2=size=1280x720:rate=25:duration=1,hue=h={rng.randrange(360)},"
        f"noise=alls=8:allf=t:all_seed={seed & 0x7FFFFFFF}"
    )
    return [
        "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", src, "-frames:v", "1", "-q:v", "4",
        "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
        "-f", "image2", "-c:v", "mjpeg", str(out_path),
    ]  # fmt: skip


def wav_argv(out_path: Path, *, seconds: float, seed: int) -> list[str]:
    """ffmpeg argv for 16 kHz mono PCM WAV (what recorders' voice mode writes), seeded (pure)."""
    rng = random.Random(f"wav:{seed}")
    tone_hz = 200 + rng.randrange(1800)
    return [
        "-hide_banner", "-nostdin", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=16000:duration={seconds:.3f}",
        "-f", "lavfi",
        "-i", f"anoisesrc=color=pink:seed={seed & 0x7FFFFFFF}:amplitude=0.05:sample_rate=16000:"
              f"duration={seconds:.3f}",
        "-filter_complex", "amix=inputs=2:duration=first",
        "-ac", "1", "-c:a", "pcm_s16le",
        "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
        "-f", "wav", str(out_path),
    ]  # fmt: skip


def _mp4_time(moment: datetime) -> str:
    # Recorders stamp their own wall clock; a naive time is taken as written (as if it were UTC) so
    # the bytes never depend on the machine's timezone.
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=1)
def _ffmpeg_binaries() -> tuple[str, str]:
    ffmpeg = shutil.which("ffmpeg")
    ffprobe = shutil.which("ffprobe")
    if ffmpeg is None or ffprobe is None:
        raise MediaError("ffmpeg and ffprobe must be on PATH (Debian: apt-get install ffmpeg)")
    return ffmpeg, ffprobe


@lru_cache(maxsize=1)
def _ffmpeg_version() -> str:
    ffmpeg, _ = _ffmpeg_binaries()
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, check=False, timeout=30)
    return out.stdout.decode("utf-8", "replace").splitlines()[0] if out.stdout else "unknown"


def _run(tool: str, args: Sequence[str]) -> bytes:
    ffmpeg, ffprobe = _ffmpeg_binaries()
    binary = ffmpeg if tool == "ffmpeg" else ffprobe
    try:
        done = subprocess.run(
            [binary, *args], capture_output=True, check=False, timeout=_FFMPEG_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{tool} took longer than {_FFMPEG_TIMEOUT_S:.0f} s: {' '.join(args)}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.decode("utf-8", "replace").splitlines()[-_STDERR_TAIL_LINES:])
        raise MediaError(f"{tool} exited with {done.returncode} for {' '.join(args)}:\n{tail}")
    return done.stdout


def probe_format(path: Path) -> tuple[float, int]:
    """(duration_s, size_bytes) as ffprobe reads them; MediaError if ffprobe cannot parse the file."""
    out = _run("ffprobe", ["-v", "error", "-show_entries", "format=duration,size", "-of", "json", str(path)])
    try:
        fmt = json.loads(out)["format"]
        return float(fmt["duration"]), int(fmt["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise MediaError(f"ffprobe gave no duration/size for {path}: {out[:200]!r}") from exc


def cache_dir() -> Path:
    """The template cache: $EVIDENCE_EDGE_SIM_CACHE, else ~/.cache/evidence-edge/sim (XDG aware).

    Created 0700 if missing; refused if it is a symlink, not ours, or writable by others, because
    a planted template would become "evidence" in every simulated recorder.
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        path = Path(configured)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) if xdg else Path.home() / ".cache"
        path = base / "evidence-edge" / "sim"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise MediaError(f"media cache {path} must be a real directory, found mode {oct(st.st_mode)}")
    if st.st_uid != os.geteuid():
        raise MediaError(f"media cache {path} is owned by uid {st.st_uid}, expected {os.geteuid()}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise MediaError(f"media cache {path} is writable by group/others (mode {oct(st.st_mode & 0o777)})")
    return path


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_templates: dict[str, TemplateClip] = {}


def ensure_template(recipe: TemplateRecipe) -> TemplateClip:
    """Encode the template for `recipe` unless a verified copy is cached; safe across processes."""
    directory = cache_dir()
    placeholder = Path("OUT.mp4")
    key_material = json.dumps(
        {"ffmpeg": _ffmpeg_version(), "argv": template_encode_argv(recipe, placeholder)}, sort_keys=True
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:40]
    cached = _templates.get(f"{directory}/{key}")
    if cached is not None and cached.path.exists():
        return cached
    clip_path = directory / f"template-{recipe.tier}-{key}.mp4"
    meta_path = clip_path.with_suffix(".json")
    with _locked(directory / f".template-{key}.lock"):
        clip = _load_verified(clip_path, meta_path)
        if clip is None:
            log.info("encoding media template %s variant %d into %s", recipe.tier, recipe.variant, directory)
            clip = _encode_template(recipe, clip_path, meta_path)
    _templates[f"{directory}/{key}"] = clip
    return clip


def _load_verified(clip_path: Path, meta_path: Path) -> TemplateClip | None:
    try:
        meta = json.loads(meta_path.read_text())
        clip = TemplateClip(clip_path, int(meta["size_bytes"]), float(meta["duration_s"]),
                            tuple((float(pts), int(size)) for pts, size in meta["packets"]))
        if not clip.packets:
            return None
        if clip_path.stat().st_size != clip.size_bytes or _sha256_file(clip_path) != meta["sha256"]:
            log.warning("media template %s does not match its recorded hash; re-encoding", clip_path)
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return clip


def _encode_template(recipe: TemplateRecipe, clip_path: Path, meta_path: Path) -> TemplateClip:
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-template-", suffix=".mp4", dir=clip_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _run("ffmpeg", template_encode_argv(recipe, tmp))
        duration_s, size_bytes = probe_format(tmp)
        packets = _probe_packets(tmp)
        meta = {"size_bytes": size_bytes, "duration_s": duration_s, "sha256": _sha256_file(tmp),
                "packets": packets}
        os.replace(tmp, clip_path)
    finally:
        tmp.unlink(missing_ok=True)
    _atomic_write(meta_path, json.dumps(meta).encode())
    return TemplateClip(clip_path, size_bytes, duration_s, tuple(packets))


def _probe_packets(path: Path) -> list[tuple[float, int]]:
    out = _run("ffprobe", ["-v", "error", "-show_entries", "packet=pts_time,size", "-of", "json", str(path)])
    try:
        packets = [(float(p["pts_time"]), int(p["size"])) for p in json.loads(out)["packets"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise MediaError(f"ffprobe gave no packet table for {path}: {out[:200]!r}") from exc
    if not packets:
        raise MediaError(f"ffprobe lists no packets in {path}")
    return sorted(packets)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _seeded_bytes(seed: int, size_bytes: int) -> bytes:
    return random.Random(f"pad:{seed}").randbytes(size_bytes)


def _append_free_box(path: Path, total_box_bytes: int, seed: int) -> None:
    # A top-level `free` box is defined padding in ISO-BMFF: demuxers skip it, so the file stays valid.
    with path.open("ab") as fh:
        fh.write(struct.pack(">I4s", total_box_bytes, b"free"))
        fh.write(_seeded_bytes(seed, total_box_bytes - FREE_BOX_HEADER_BYTES))


@contextlib.contextmanager
def _temp_beside(path: Path, suffix: str) -> Iterator[Path]:
    """A temp file next to `path`, renamed over it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_mp4(path: Path, *, size_bytes: int, seed: int, creation_time: datetime | None = None) -> None:
    """Write an ffprobe-valid H.264/AAC MP4 of exactly `size_bytes` bytes, content chosen by `seed`.

    Raises MediaError if `size_bytes` is below the smallest MP4 the template can make (a few KB).
    """
    if size_bytes <= 0:
        raise MediaError(f"MP4 size must be positive, got {size_bytes} bytes")
    clip = ensure_template(_tier_recipe(size_bytes, seed % TEMPLATE_VARIANTS))
    frame_s = 1 / 25
    duration_s = _aim_duration(clip, size_bytes, frame_s)
    with _temp_beside(path, ".mp4") as tmp:
        for _attempt in range(8):
            _run("ffmpeg", loop_copy_argv(clip.path, tmp, duration_s=duration_s, seed=seed,
                                          creation_time=creation_time))
            made = tmp.stat().st_size
            gap = size_bytes - made
            if gap == 0 or gap >= FREE_BOX_HEADER_BYTES:
                break
            if gap < 0 and duration_s <= frame_s:
                raise MediaError(
                    f"MP4 of {size_bytes} bytes is too small: the shortest clip is {made} bytes"
                )
            # Overshot, or left a gap too small for a padding box: shorten proportionally.
            # Each retry drops at least one frame so tiny targets converge too.
            duration_s = max(frame_s, min(duration_s - frame_s, duration_s * size_bytes / made * 0.98))
        else:
            raise MediaError(f"could not bring an MP4 to {size_bytes} bytes (last try {made} bytes)")
        if gap:
            _append_free_box(tmp, gap, seed)
    log.debug("made %s: %d bytes, seed %d", path, size_bytes, seed)


def _aim_duration(clip: TemplateClip, size_bytes: int, frame_s: float) -> float:
    """The longest whole-frame duration whose predicted size leaves room below `size_bytes`."""
    # Aim a little low: an overshoot costs another remux, an undershoot only padding.
    budget = size_bytes * 0.998 - 2048
    lo, hi = 1, max(2, int(size_bytes / (clip.size_bytes / clip.duration_s) / frame_s) * 2 + 2)
    while lo < hi:  # largest frame count k with predicted_size(k frames) <= budget
        mid = (lo + hi + 1) // 2
        if clip.predicted_size(mid * frame_s) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * frame_s


def make_jpg(path: Path, *, seed: int) -> None:
    """Write a 1280x720 JPG photo whose pixels depend on `seed`."""
    with _temp_beside(path, ".jpg") as tmp:
        _run("ffmpeg", jpg_argv(tmp, seed=seed))


def make_wav(path: Path, *, seconds: float, seed: int) -> None:
    """Write `seconds` of 16 kHz mono PCM WAV (tone plus seeded noise)."""
    if not 0 < seconds <= 3600:
        raise MediaError(f"WAV duration must be in (0, 3600] s, got {seconds}")
    with _temp_beside(path, ".wav") as tmp:
        _run("ffmpeg", wav_argv(tmp, seconds=seconds, seed=seed))
