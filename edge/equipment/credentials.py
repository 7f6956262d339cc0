"""Officer credentials: card UIDs as one canonical spelling, PINs as argon2id hashes.

A card UID is what a reader reports for a card: 4, 7 or 10 bytes for 13.56 MHz cards (ISO 14443), 5 bytes
for 125 kHz EM4100 tags (version byte + 32-bit id). Readers and lists spell it with or without separators,
in either case; the registry keeps upper-case hex digits only, so `04:a2:1b:7c` and `04A21B7C` are one card.
Decimal card numbers (printed on some EM4100 fobs) are not accepted: they lose the version byte.

PINs are short (4..12 digits), so their hash does not protect them against anyone who can read the store
and spend ~10^6 argon2 runs: the protection of a PIN is the lockout after failed attempts
(:mod:`.assignments`) and the store's file permissions. They are still hashed (argon2id, argon2-cffi's
defaults) so that a copy of the store or a backup does not show them in clear, and verified in constant
time; an unknown 警号 is verified against a dummy hash so that the time of a refusal does not tell which
警号 exist.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "CARD_UID_HEX_LENGTHS",
    "PIN_MAX_DIGITS",
    "PIN_MIN_DIGITS",
    "CredentialError",
    "check_pin",
    "hash_pin",
    "normalise_card_uid",
    "verify_pin",
]

# Hex digits of the UIDs readers report: 4-byte (NUID), 5-byte (EM4100), 7-byte and 10-byte UIDs.
CARD_UID_HEX_LENGTHS = (8, 10, 14, 20)
PIN_MIN_DIGITS = 4
PIN_MAX_DIGITS = 12

_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"[0-9A-F]+")
_PIN = re.compile(r"[0-9]+")

_hasher = PasswordHasher()
# Made once per process, lazily: a full argon2 run (64 MiB) that only PIN checks need.
_dummy_hash: str | None = None


class CredentialError(ValueError):
    """A card UID or a PIN that is not well formed; the message never contains a PIN."""


def normalise_card_uid(text: str) -> str:
    """The canonical spelling of a card UID (upper-case hex digits, no separators), or CredentialError."""
    compact = _SEPARATORS.sub("", text).upper()
    if not compact.isascii() or not _HEX.fullmatch(compact):
        raise CredentialError(
            f"card UID: expected hex digits (separators : - or space allowed), got {text[:40]!r}")
    if len(compact) not in CARD_UID_HEX_LENGTHS:
        lengths = ", ".join(str(n) for n in CARD_UID_HEX_LENGTHS)
        raise CredentialError(f"card UID: expected {lengths} hex digits, got {len(compact)}")
    return compact


def check_pin(pin: str) -> str:
    """`pin` if it is 4..12 ASCII digits; the error names the rule, never the PIN."""
    if not pin.isascii() or not _PIN.fullmatch(pin):
        raise CredentialError("PIN: expected digits only")
    if not PIN_MIN_DIGITS <= len(pin) <= PIN_MAX_DIGITS:
        raise CredentialError(f"PIN: expected {PIN_MIN_DIGITS}..{PIN_MAX_DIGITS} digits, got {len(pin)}")
    return pin


def hash_pin(pin: str) -> str:
    """The argon2id PHC string of a PIN (about 0.1-0.3 s and 64 MiB: hash outside transactions)."""
    return _hasher.hash(check_pin(pin))


def verify_pin(pin_hash: str | None, pin: str) -> bool:
    """Whether `pin` matches `pin_hash`; None (an unknown officer, no PIN set) costs the same and is False."""
    global _dummy_hash
    if len(pin) > PIN_MAX_DIGITS * 4:  # bounds the work a typed string can ask for
        return False
    if pin_hash is None and _dummy_hash is None:
        _dummy_hash = _hasher.hash("not any officer's PIN: equalises the time of unknown 警号")
    try:
        _hasher.verify(pin_hash or _dummy_hash or "", pin)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return pin_hash is not None
