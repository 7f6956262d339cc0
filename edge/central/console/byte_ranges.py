"""The console player's ``Range`` header (RFC 9110, section 14), read once for every object store.

One request asks for at most one part of an item's content; what it gets is decided here, for the local
folder and the S3 bucket alike (:mod:`edge.central.console.media` serves exactly this, and the access log
records exactly this):

- no ``Range``, or a range unit other than ``bytes`` (which a server MUST ignore): the whole content, 200;
- one range ``bytes=F-L``, ``bytes=F-`` or ``bytes=-N``: that part, 206 (``L`` past the end is cut to the
  end, a suffix longer than the content is the whole content);
- several ranges: the whole content, 200 (a server MAY ignore ``Range``; the console serves no
  ``multipart/byteranges``, and a player never asks for it);
- unsatisfiable (a first byte at or past the end, a suffix of 0 bytes, any range of empty content) or
  invalid (the last byte before the first, anything that is not ``F-L``, ``F-`` or ``-N``, or more than
  one ``Range`` field): 416 with ``Content-Range: bytes */SIZE``, nothing served. RFC 9110 lets a server
  reject an invalid range; 416 tells a player the size it can ask within.

aiohttp's ``Request.http_range`` is not used: it reads ``bytes=-0`` as ``bytes=0-`` (the whole content,
where RFC 9110 says a zero-length suffix is unsatisfiable) and cannot tell several ranges from garbage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ContentRange", "content_range_of"]

_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
# More digits than any size: such a position is past every end (and int() of it is bounded work).
_MAX_DIGITS = 19
_BEYOND_ANY_SIZE = 1 << 63


@dataclass(frozen=True)
class ContentRange:
    """What a request gets of content of ``size`` bytes: bytes ``first`` to ``stop - 1``; ``partial`` for a
    served range (206); ``refused`` says why nothing is served (416), None when something is."""

    first: int
    stop: int
    size: int
    partial: bool
    refused: str | None = None

    @property
    def satisfiable(self) -> bool:
        return self.refused is None

    @property
    def count(self) -> int:
        return max(0, self.stop - self.first)

    @property
    def content_range(self) -> str | None:
        """The response's ``Content-Range`` (None for the whole content, 200)."""
        if self.refused is not None:
            return f"bytes */{self.size}"
        return f"bytes {self.first}-{self.stop - 1}/{self.size}" if self.partial else None


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _BEYOND_ANY_SIZE


def content_range_of(fields: Sequence[str], size: int) -> ContentRange:
    """What a request whose ``Range`` fields are ``fields`` (each value as received, in order) gets of
    content of ``size`` bytes."""
    whole = ContentRange(0, size, size, partial=False)

    def refused(why: str) -> ContentRange:
        return ContentRange(0, 0, size, partial=False, refused=why)

    if not fields:
        return whole
    if len(fields) > 1:
        return refused("the request has several Range fields")
    unit, equals, range_set = fields[0].strip().partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return whole  # not a bytes range: ignored, as RFC 9110 requires of a unit it does not know
    specs = [spec.strip() for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # the list syntax allows empty elements
    parsed = [_RANGE_SPEC.fullmatch(spec) for spec in specs]
    if not parsed or any(match is None for match in parsed):
        return refused("the Range is not a list of bytes ranges (first-last, first- or -suffix)")
    bounds = [(match.group(1), match.group(2)) for match in parsed if match is not None]
    if any(not first and not last for first, last in bounds):
        return refused("a bytes range names neither its first byte nor a suffix length")
    if any(first and last and _position(last) < _position(first) for first, last in bounds):
        return refused("a bytes range ends before it starts")
    if len(bounds) > 1:
        return whole  # several ranges: ignored (no multipart/byteranges), the whole content
    (first_text, last_text), = bounds
    if not first_text:
        suffix = _position(last_text)
        if suffix == 0:
            return refused("a suffix of 0 bytes selects nothing")
        if size == 0:
            return refused("the content is empty")
        return ContentRange(max(0, size - suffix), size, size, partial=True)
    first = _position(first_text)
    if first >= size:
        return refused(f"the range starts at byte {first}, past the end")
    stop = size if not last_text else min(_position(last_text) + 1, size)
    return ContentRange(first, stop, size, partial=True)
