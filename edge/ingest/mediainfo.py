"""Media facts for the manifest, from ffprobe (for what the in-process readers of
:mod:`edge.ingest.media` do not fully understand).

ffprobe parses hostile bytes, so it runs

* confined by Landlock (:mod:`edge.ingest.probe_sandbox`): it may read the one file it probes and the
  system's libraries, nothing else (not the station key, not the rest of the store), may write no
  file, open no TCP connection and signal no process; if the sandbox cannot be set up it is not run;
* with a demuxer whitelist (the containers recorders write; no playlist, concatenation or image
  sequence demuxer that would open other files) and only the `file` protocol;
* with a minimal environment (nothing of the agent's, such as its credentials directory);
* under a deadline, its output read with a bound (:mod:`edge.runtime.bounded`): a probe that hangs or
  prints without end is killed.

A file ffprobe cannot read is still evidence: it is acquired and sealed, and its media facts say why
they are missing (never naming a station path).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from edge.ingest import probe_sandbox
from edge.runtime.bounded import run_bounded

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
MAX_PROBE_OUTPUT = 4 << 20
# ffmpeg demuxers for the evidence extensions recorders write (config offload.extensions): MP4/MOV,
# AVI, MKV, MPEG-TS and -PS (GB/T 28181 carries PS), Dahua DAV, raw H.264/H.265, WAV, MP3, ADTS AAC,
# AMR, and single JPEG/PNG/BMP pictures. Not hls, dash, concat, image2 or anything else that reads
# further files or URLs named inside the probed one.
FORMAT_WHITELIST = (
    "mov,avi,matroska,mpegts,mpeg,dhav,h264,hevc,wav,mp3,aac,amr,amrnb,amrwb,jpeg_pipe,png_pipe,bmp_pipe"
)
PROTOCOL_WHITELIST = "file"
# The probe sees none of the agent's environment (its credentials directory, for one).
PROBE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"}


# ffmpeg logs a refusal by the whitelist as a warning, naming the demuxer: "[hls @ 0x...] Format not ..."
_NOT_WHITELISTED = re.compile(r"\[([a-z0-9_,]+) @ 0x[0-9a-f]+\] Format not on whitelist")


def probe_argv(path: Path, ffprobe: str = "ffprobe") -> list[str]:
    """ffprobe's own command line (pure): JSON report of format and streams, whitelists set."""
    return [
        ffprobe, "-v", "warning", "-hide_banner",
        "-protocol_whitelist", PROTOCOL_WHITELIST, "-format_whitelist", FORMAT_WHITELIST,
        "-show_format", "-show_streams", "-of", "json", f"file:{path}",
    ]  # fmt: skip


def sandboxed_argv(readable: Path, command: list[str]) -> list[str]:
    """`command` run through the Landlock wrapper, allowed to read `readable` only (pure)."""
    return [sys.executable, "-I", str(Path(probe_sandbox.__file__)), "--read", str(readable), "--", *command]


def media_facts(
    path: Path, *, timeout_s: float = PROBE_TIMEOUT_S, ffprobe: str = "ffprobe"
) -> dict[str, Any]:
    """Container, codecs, duration and resolution, or `{"error": ...}` when ffprobe cannot tell."""
    path = path.resolve()
    run = run_bounded(
        sandboxed_argv(path, probe_argv(path, ffprobe)),
        timeout_s=timeout_s,
        max_output_bytes=MAX_PROBE_OUTPUT,
        env=PROBE_ENV,
    )
    if run.timed_out:
        return {"error": f"ffprobe did not finish within {timeout_s:.0f} s and was killed"}
    if run.output_exceeded:
        return {"error": f"ffprobe printed more than {MAX_PROBE_OUTPUT} bytes and was killed"}
    text = run.stderr_tail.decode("utf-8", "replace")
    message = text.replace(f"file:{path}", "the file").replace(str(path), "the file").strip().splitlines()
    last = message[-1] if message else ""
    refused = _NOT_WHITELISTED.search(text)
    if run.returncode == probe_sandbox.SANDBOX_UNAVAILABLE:
        log.error("ffprobe not run: %s", last)
        return {"error": f"ffprobe not run, no sandbox: {last}"[:300]}
    if run.returncode == 127:
        return {"error": "ffprobe is not installed"}
    if run.returncode != 0 and refused is not None:
        demuxer = refused.group(1)[:40]
        return {"error": f"ffprobe: the {demuxer} container is not among those read for evidence"}
    if run.returncode != 0:
        return {"error": (last or f"ffprobe exit status {run.returncode}")[:300]}
    try:
        parsed = json.loads(run.stdout)
    except ValueError:
        return {"error": "ffprobe printed something that is not JSON"}
    if not isinstance(parsed, dict):
        return {"error": "ffprobe printed JSON that is not an object"}
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
