"""The console's secret key: TOTP secrets sealed at rest, and the key of the console trails' seals.

``index.db`` holds each account's TOTP secret sealed with AES-256-GCM (``cryptography``) under a key the
central keeps outside the database, ``identity/console.key`` (mode 0600, beside the signing key, made by
``edge central init`` or at the first start of a store made before it existed). The account name is the
associated data, so a sealed secret copied onto another account's row does not open; a copy of
``index.db`` alone (a backup, a stolen file, a read-only SQL hole) yields no second factor.

Stored text: ``sealed-v1:`` and the URL-safe base64 of a 12-byte random nonce followed by the ciphertext
and its 16-byte tag. A secret without that prefix was written by an older central and is sealed at the
next start (:func:`prepare_console_key`).

When the key file is missing, unreadable, or not the key the secrets were sealed with, sign-ins of
accounts with TOTP are refused and the reason is logged naming the file; the central keeps serving.
A missing key is never silently replaced while sealed secrets exist (they could no longer be opened):
the operator restores it from backup, or re-enrols TOTP for every account.

The same file keys the seals of the console's append-only trails (:mod:`edge.central.sqlite.trail`),
through a subkey derived with HKDF, so the two uses never share key material. A starting central also
seals, once, the trail rows of a store made before those seals.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.durable.files import SmallFileError, read_small_file, write_new_file

__all__ = [
    "SEALED_PREFIX",
    "ConsoleKeyError",
    "ConsoleSecretKey",
    "SealedSecretError",
    "is_sealed",
    "prepare_console_key",
]

log = logging.getLogger(__name__)

SEALED_PREFIX = "sealed-v1:"
_FILE_PREFIX = b"edge-console-key-v1:"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TOTP_CONTEXT = b"edge-console totp-secret v1\x00"


class ConsoleKeyError(Exception):
    """The console key file is missing, unreadable or malformed; the message names the file."""


class SealedSecretError(Exception):
    """A sealed secret does not open: another key, another account's secret, or damaged text."""


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


class ConsoleSecretKey:
    """The 32-byte key of ``identity/console.key``; its repr shows a fingerprint, never the key."""

    def __init__(self, key: bytes, path: Path) -> None:
        if len(key) != _KEY_BYTES:
            raise ConsoleKeyError(f"{path}: a console key has {_KEY_BYTES} bytes, found {len(key)}")
        self._aead = AESGCM(key)
        self._trail_key = _subkey(key, b"edge-console trail-seals v1")
        self.fingerprint = hashlib.sha256(_subkey(key, b"edge-console fingerprint v1")).hexdigest()[:16]
        self.path = path

    def __repr__(self) -> str:
        return f"ConsoleSecretKey(path={str(self.path)!r}, fingerprint={self.fingerprint!r})"

    @classmethod
    def load(cls, path: Path) -> ConsoleSecretKey:
        try:
            data = read_small_file(path, 256, expected="the console key", private=True)
        except SmallFileError as exc:
            raise ConsoleKeyError(str(exc)) from None
        text = data.strip()
        if not text.startswith(_FILE_PREFIX):
            raise ConsoleKeyError(f"{path}: not a console key (it does not start with "
                                  f"{_FILE_PREFIX.decode()!r})")
        try:
            key = base64.urlsafe_b64decode(text[len(_FILE_PREFIX):])
        except (binascii.Error, ValueError):
            raise ConsoleKeyError(f"{path}: the console key is not valid base64") from None
        return cls(key, path)

    @classmethod
    def create(cls, path: Path) -> ConsoleSecretKey:
        """A new random key written to ``path`` (mode 0600); never replaces an existing file."""
        key = secrets.token_bytes(_KEY_BYTES)
        try:
            write_new_file(path, _FILE_PREFIX + base64.urlsafe_b64encode(key) + b"\n", 0o600)
        except OSError as exc:
            raise ConsoleKeyError(f"{path}: cannot create the console key: {exc.strerror or exc}") from None
        return cls(key, path)

    def seal_totp(self, account: str, secret: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), _TOTP_CONTEXT + account.encode("utf-8"))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open_totp(self, account: str, stored: str) -> str:
        """The TOTP secret of ``account`` from its stored text; :class:`SealedSecretError` when it does
        not open with this key for this account (or is not sealed at all)."""
        if not is_sealed(stored):
            raise SealedSecretError(f"the TOTP secret of {account} is not sealed (written by an older "
                                    "central; the next start seals it)")
        try:
            raw = base64.urlsafe_b64decode(stored[len(SEALED_PREFIX):])
            if len(raw) <= _NONCE_BYTES + 16:
                raise ValueError("too short")
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                       _TOTP_CONTEXT + account.encode("utf-8"))
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedSecretError(
                f"the sealed TOTP secret of {account} does not open with console key {self.fingerprint} "
                f"({self.path}): the key is not the one it was sealed with, or the secret was moved from "
                "another account or damaged"
            ) from None
        return plain.decode("ascii")

    @property
    def trail_key(self) -> bytes:
        """The HMAC key of the console trails' seals (a subkey: never the TOTP sealing key itself)."""
        return self._trail_key


def _subkey(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class TotpSecretStore(Protocol):
    """What :func:`prepare_console_key` needs of the console store."""

    def totp_secrets(self) -> list[tuple[str, str]]: ...
    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def scrub_replaced(self) -> bool: ...
    def seal_trails(self, trail_key: bytes) -> int: ...


def prepare_console_key(path: Path, store: TotpSecretStore, *, by: str) -> ConsoleSecretKey | None:
    """The console key at ``path`` for a starting central (or an administration command): loaded, or
    made when missing and no sealed secret needs the old one; then every TOTP secret an older central
    stored in plain text is sealed with it (recorded as ``totp_sealed`` by ``by``).

    None, with the reason logged as an error, when the key is missing while sealed secrets exist, or
    cannot be read: TOTP sign-ins are then refused, everything else keeps working."""
    stored = store.totp_secrets()
    try:
        if path.exists() or path.is_symlink():
            key = ConsoleSecretKey.load(path)
        elif any(is_sealed(text) for _, text in stored):
            log.error("console key %s is missing, but TOTP secrets in the index are sealed with it: "
                      "sign-ins of accounts with TOTP are refused until it is restored from backup "
                      "(mode 0600), or TOTP is enrolled again for each account", path)
            return None
        else:
            key = ConsoleSecretKey.create(path)
            log.info("console key %s created (fingerprint %s): TOTP secrets are sealed with it", path,
                     key.fingerprint)
    except ConsoleKeyError as exc:
        log.error("console key unusable: %s; sign-ins of accounts with TOTP are refused", exc)
        return None
    old_rows = store.seal_trails(key.trail_key)
    if old_rows:
        log.info("console: %d trail rows made before the seals are now sealed", old_rows)
    sealed_now = 0
    for name, text in stored:
        if is_sealed(text):
            try:
                key.open_totp(name, text)
            except SealedSecretError as exc:
                log.error("console: %s; that account cannot sign in until TOTP is enrolled again", exc)
            continue
        if store.seal_totp_secret(name, text, key.seal_totp(name, text), by=by):
            sealed_now += 1
            log.info("console: the TOTP secret of %s, stored in plain text by an older central, is now "
                     "sealed with console key %s", name, key.fingerprint)
    if sealed_now and not store.scrub_replaced():
        log.warning("console: the plain TOTP secrets just sealed may remain in index.db-wal until the "
                    "next checkpoint (another connection was reading)")
    return key
