"""Exception hierarchy of the custody layer.

Every error says what was expected and what came, so an operator reading a log line (or a court expert
reading a report) can tell a damaged file from a programming mistake.
"""

from __future__ import annotations


class CustodyError(Exception):
    """Base of every error raised by :mod:`edge.custody`."""


class CanonicalJsonError(CustodyError, ValueError):
    """A value cannot be serialised as canonical JSON, or JSON text is not acceptable."""


class KeyFileError(CustodyError):
    """A station key file is missing, unsafe (readable by others), malformed or inconsistent."""


class KeyFormatError(CustodyError, ValueError):
    """A public key or signature encoding is malformed."""


class LedgerError(CustodyError):
    """The ledger table is unusable (bad row, append race, invalid argument)."""


class ManifestError(CustodyError, ValueError):
    """A manifest cannot be signed or parsed."""


class IsoBmffError(CustodyError, ValueError):
    """A file is not a cleanly parseable sequence of ISO-BMFF top-level boxes."""


class SealError(CustodyError):
    """An evidence box cannot be appended to a file."""
