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
# terminals), the line and paragraph separators, every format character (Unicode category Cf: the bidi
# controls that make a reader see text in another order than it is, Trojan Source, CVE-2021-42574;
# zero-width spaces and joiners, the soft hyphen, the BOM, the invisible tag characters) and every
# space separator other than the ASCII space (category Zs: U+00A0, U+3000 ideographic space, ...),
# which look like a space but are not one to a reader or a parser of `key=value` fields, so a device
# name cannot look like two words or smuggle an invisible difference. The ranges are Cc, Cf, Zs, Zl
# and Zp of Unicode 15 (U+13430-U+1343F in full: 15.0 added format controls there);
# tests/station/test_device_text_escaped.py checks them against the running `unicodedata`.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\xa0\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u1680\u180e"
    "\u2000-\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` safe to show on one line: control, format (bidi, zero-width) and non-ASCII space
    characters as ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN``.

    Everything else (Chinese names included) is shown as it is.
    """
    return _UNSAFE.sub(_escaped, text)


def json_printable(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters :func:`printable`
    escapes written as JSON escapes, so the document means the same and shows safely."""
    return _UNSAFE.sub(_json_escaped, text)


def _json_escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # JSON has no 6-digit escape: a surrogate pair
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
