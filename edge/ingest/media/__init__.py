"""Media facts read in-process from the bytes of MP4, JPEG and WAV files (pure, bounded parsers).

Each parser either fully understands a file and returns the same summary ffprobe's report gives
(:func:`edge.ingest.mediainfo.summarise_probe`), or raises :class:`NotUnderstood` so that the caller
falls back to ffprobe. They read through a seekable binary file object, never more than a fixed
number of bytes whatever a header claims, and never loop more than a fixed number of times.
"""

from edge.ingest.media.errors import NotUnderstood
from edge.ingest.media.sniff import MediaKind, read_facts, sniff

__all__ = ["MediaKind", "NotUnderstood", "read_facts", "sniff"]
