"""Text that leaves the station: error prose without station paths.

Signed manifests, ledger entries and everything the uplink sends are read far from the station, for
years. Error prose that reaches them (an ffprobe message, an OSError with its file name, an
exception's str()) must not carry the station's file system layout: a temp path such as
`/var/lib/evidence-edge/tmp/<item>.part` says nothing about the evidence and everything about the
machine. :func:`hide_station_paths` replaces every absolute path in a piece of prose by
:data:`STATION_PATH`; :func:`scrub_error_text` applies it to the prose fields of a JSON-like record.
Device data (a file's name and path on the recorder) is kept exactly, in fields of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ERROR_TEXT_KEYS", "STATION_PATH", "hide_station_paths", "scrub_error_text"]

STATION_PATH = "<station path>"
# Prose members of ledger data and media facts (the keys errors are written under).
ERROR_TEXT_KEYS = frozenset({"reason", "error", "detail", "message"})

# An absolute path: a "/" that does not continue a word, a relative path or a URL ("DCIM/1.MP4",
# "I/O", "bytes/s", "https://central/" stay), then everything up to white space, a quote or a
# separator that ends a path in prose (": " after a path in an OSError or ffprobe line).
_ABSOLUTE_PATH = re.compile(r"(?<![\w./\-~:])/(?:[^\s'\"`:;,()\[\]{}<>]|:(?!\s|$))*")


def hide_station_paths(text: str, roots: Sequence[str] = ()) -> str:
    """`text` with every absolute path replaced by STATION_PATH.

    `roots` are directories known to be the station's (the store): they are replaced first, with
    whatever path follows them, even when they contain characters that end a path in prose (a space).
    """
    for root in sorted((r.rstrip("/") for r in roots if r.strip("/")), key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(?:/[^\s'\"`:;,()\[\]{}<>]*)?", STATION_PATH, text)
    return _ABSOLUTE_PATH.sub(STATION_PATH, text)


def scrub_error_text(data: Any, roots: Sequence[str] = ()) -> Any:
    """A copy of `data` (nested dicts and lists) whose error prose members hold no station path."""
    if isinstance(data, Mapping):
        return {
            key: hide_station_paths(value, roots) if key in ERROR_TEXT_KEYS and isinstance(value, str)
            else scrub_error_text(value, roots)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [scrub_error_text(value, roots) for value in data]
    return data
