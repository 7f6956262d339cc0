"""Strict parsing of the numbers a client writes into headers and query strings (a pure codec).

HTTP numbers are ``1*DIGIT`` where DIGIT is the ASCII ``0``-``9`` (RFC 9110 §5.6.1 and RFC 5234). Python's
``str.isdigit`` and ``int`` accept far more: ``int("١٢")`` is 12, ``"²".isdigit()`` is true while
``int("²")`` raises, and ``int`` also takes ``+``, ``-``, spaces and underscores. A number that two parsers
read differently is a way to smuggle one value past a check written against the other, so every number
the central reads from a request goes through :func:`parse_ascii_uint`: ASCII digits only, no sign, no
the central reads from a request goes through :func:`parse_ascii_uint`: ASCII digits only, no sign, no
space, no underscore, at most 19 digits (so no huge-integer parsing), within the caller's bounds.
Leading zeros are accepted (``007`` is 7), as the HTTP grammar allows them.
"""

from __future__ import annotations

import re

__all__ = ["MAX_DIGITS", "AsciiNumberError", "parse_ascii_uint"]

# Every byte count below 2**63 (9 223 372 036 854 775 807) has at most 19 digits.
MAX_DIGITS = 19
_ASCII_DIGITS_RE = re.compile(r"[0-9]{1,19}")  # [0-9] is the ASCII range, unlike \d


class AsciiNumberError(ValueError):
    """A value is not an ASCII decimal number within bounds; the message says what was found."""


def parse_ascii_uint(value: str, *, minimum: int = 0, maximum: int = 10**MAX_DIGITS - 1) -> int:
    """The non-negative integer ``value`` spells in ASCII digits, checked against ``[minimum, maximum]``."""
    if not value:
        raise AsciiNumberError("expected a non-negative decimal integer, got an empty value")
    if len(value) > MAX_DIGITS and value.isascii() and value.isdigit():
        raise AsciiNumberError(f"expected at most {MAX_DIGITS} digits, got {len(value)}")
    if _ASCII_DIGITS_RE.fullmatch(value) is None:
        raise AsciiNumberError(
            f"expected a non-negative decimal integer in ASCII digits 0-9, got {value[:40]!a}"
        )
    number = int(value)
    if not minimum <= number <= maximum:
        raise AsciiNumberError(f"expected a number from {minimum} to {maximum}, got {number}")
    return number
