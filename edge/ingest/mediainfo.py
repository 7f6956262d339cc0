"""Media facts for the manifest, from ffprobe (for what the in-process readers of
:mod:`edge.ingest.media` do not fully understand).

ffmpeg-python's `probe` has no timeout, and a hostile file must not hang an offload, so the ffprobe
call is made here with the same arguments and a deadline. A file ffprobe cannot read is still
evidence: it is acquired and sealed, and its media facts say why they are missing.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
MAX_PROBE_OUTPUT = 4 << 20


def probe_argv(path: Path, ffprobe: str = "ffprobe") -> list[str]:
    return [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", "--", str(path)]


def media_facts(path: Path, *, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Container, codecs, duration and resolution, or `{"error": ...}` when ffprobe cannot tell."""
    try:
        done = subprocess.run(
            probe_argv(path), capture_output=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"error": f"ffprobe did not finish within {timeout_s:.0f} s"}
    except FileNotFoundError:
        return {"error": "ffprobe is not installed"}
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return {"error": (message[-1] if message else f"ffprobe exit status {done.returncode}")[:300]}
    try:
        parsed = json.loads(done.stdout[:MAX_PROBE_OUTPUT])
    except ValueError:
        return {"error": "ffprobe printed something that is not JSON"}
    return {**summarise_probe(parsed), "parser": "ffprobe"}


def summarise_probe(probe: dict[str, Any]) -> dict[str, Any]:
    """The manifest's view of an ffprobe report: small, stable, integers where possible."""
    fmt = probe.get("format") or {}
    facts: dict[str, Any] = {"container": str(fmt.get("format_name", ""))}
    duration = _milliseconds(fmt.get("duration"))
    if duration is not None:
        facts["duration_ms"] = duration
    streams = []
    for stream in probe.get("streams") or []:
        entry: dict[str, Any] = {
            "type": str(stream.get("codec_type", "")),
            "codec": str(stream.get("codec_name", "")),
        }
        if stream.get("codec_type") == "video":
            for key in ("width", "height"):
                if isinstance(stream.get(key), int):
                    entry[key] = stream[key]
        if stream.get("codec_type") == "audio":
            if str(stream.get("sample_rate", "")).isdigit():
                entry["sample_rate"] = int(stream["sample_rate"])
            if isinstance(stream.get("channels"), int):
                entry["channels"] = stream["channels"]
        streams.append(entry)
    facts["streams"] = streams
    tags = fmt.get("tags") or {}
    if isinstance(tags, dict) and isinstance(tags.get("creation_time"), str):
        facts["creation_time"] = tags["creation_time"][:40]
    return facts


def _milliseconds(value: object) -> int | None:
    try:
        return round(float(str(value)) * 1000)
    except ValueError:
        return None
