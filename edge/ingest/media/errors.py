"""The one exception of the in-process media parsers."""

from __future__ import annotations


class NotUnderstood(Exception):
    """The parser cannot vouch for this file's facts; the message says what it met. Ask ffprobe."""
