"""Text that leaves the station or reaches a reader: error prose without station paths, and device
strings that cannot forge a line or drive a terminal.

Signed manifests, ledger entries and everything the uplink sends are read far from the station, for
years. Error prose that reaches them (an ffprobe message, an OSError with its file name, an
exception's str()) must not carry the station's file system layout: a temp path such as
`/var/lib/evidence-edge/tmp/<item>.part` says nothing about the evidence and everything about the
machine. :func:`hide_station_paths` replaces every absolute path in a piece of prose by
:data:`STATION_PATH`; :func:`scrub_error_text` applies it to the prose fields of a JSON-like record.
Device data (a file's name and path on the recorder) is kept exactly, in fields of its own.

Names and strings from devices (a recorder's file names, its serial number, a forged manifest's
fields) are stored exactly, but whenever they are shown (a log line, `edge verify` output, the
console) they go through :func:`printable`: one record stays one line and a terminal is never driven
by what a device wrote. :func:`json_printable` does the same inside JSON text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ERROR_TEXT_KEYS",
    "STATION_PATH",
    "hide_station_paths",
    "json_printable",
    "printable",
    "scrub_error_text",
]

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


# What must never reach a log line, a terminal or a report raw: C0 controls (newline, carriage return
# and tab included: one record is one line), DEL, C1 controls (U+009B is a one-character CSI on some
# terminals), the line and paragraph separators, and the Unicode bidi controls that make a reader see
# text in another order than it is (Trojan Source, CVE-2021-42574): ALM, LRM, RLM, the embeddings and
# overrides U+202A-U+202E and the isolates U+2066-U+2069.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` safe to show on one line: control and bidi characters as ``\\xNN`` / ``\\uNNNN``.

    Everything else (Chinese names included) is shown as it is.
    """
    return _UNSAFE.sub(_escaped, text)


def json_printable(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters :func:`printable`
    escapes written as JSON escapes, so the document means the same and shows safely."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
