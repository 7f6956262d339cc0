"""Media facts for an item's manifest, and whether its manifest can be embedded in the file.

Most recorder files are MP4, JPEG or WAV, and for those the facts are read in-process
(:mod:`edge.ingest.media`): a few header reads instead of an ffprobe process, which costs more than
copying a short clip. Whatever the in-process readers do not fully understand goes to ffprobe, as
before.

Embedding (a trailing top-level `uuid` box with the signed manifest) is decided per file:

* only files with an ISO-BMFF extension, and only when :func:`edge.custody.isobmff.seal_decision`
  finds the box chain clean to the end of the file (first box ftyp, a moov, no size-0 box at the end,
  no mfra that players locate from the end, not already sealed);
* when the in-process reader understood the movie (one moov, known tracks, not fragmented), that
  structural check is the whole decision: ISO/IEC 14496-12 requires readers to skip boxes they do
  not know, and each way a trailing box could upset a reader is a structural one checked above;
* otherwise ffprobe reads the file once with a placeholder box already appended, which both gives the
  facts and shows that ffmpeg accepts a trailing box on this very file; if it does not, the manifest
  stays in the sidecar only.

Either way, the sealed file is re-read and its prefix hashed before it is published, and the tests
check with ffprobe that sealed files read exactly as their manifests say.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from edge.custody.isobmff import evidence_box, seal_decision
from edge.ingest.media import MediaKind, NotUnderstood, read_facts
from edge.ingest.mediainfo import media_facts

log = logging.getLogger(__name__)

PLACEHOLDER_MANIFEST = b'{"format":"evidence-edge/placeholder"}'
ISO_BMFF_EXTENSIONS = {"mp4", "mov", "m4a", "m4v", "3gp"}


def media_facts_and_seal(part: Path, size: int, ext: str) -> tuple[dict[str, Any], str | None]:
    """Media facts of the first `size` bytes of `part`, and why the manifest cannot be embedded
    (None when it can)."""
    with part.open("rb") as f:
        try:
            kind, facts = read_facts(f, size)
        except NotUnderstood as exc:
            log.debug("%s: media facts from ffprobe: %s", part.name, exc)
        else:
            if ext not in ISO_BMFF_EXTENSIONS:
                return facts, f"not an ISO-BMFF file (.{ext})"
            if kind is not MediaKind.MP4:
                return facts, f"the content of this .{ext} file is {kind.value}, not ISO-BMFF"
            sealable, reason = seal_decision(f, size)
            return facts, None if sealable else reason
    return _ffprobe_facts_and_seal(part, size, ext)


def _ffprobe_facts_and_seal(part: Path, size: int, ext: str) -> tuple[dict[str, Any], str | None]:
    if ext not in ISO_BMFF_EXTENSIONS:
        return media_facts(part), f"not an ISO-BMFF file (.{ext})"
    with part.open("rb") as f:
        sealable, reason = seal_decision(f, size)
    if not sealable:
        return media_facts(part), reason
    with part.open("ab") as f:
        f.write(evidence_box(PLACEHOLDER_MANIFEST))
    try:
        media = media_facts(part)
    finally:
        os.truncate(part, size)
    if "error" not in media:
        return media, None
    original = media_facts(part)
    if "error" in original:
        return original, "ffprobe cannot read the file"
    return original, "ffprobe reads the file only without a trailing box; manifest kept in the sidecar"
