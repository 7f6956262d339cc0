"""The console's secret key: TOTP secrets sealed at rest, and the key of the console trails' seals.

``index.db`` holds each account's TOTP secret sealed with AES-256-GCM (``cryptography``) under a key the
central keeps outside the database, ``identity/console.key`` (mode 0600, beside the signing key, made by
``edge central init`` or at the first start of a store made before it existed). The account name is the
associated data, so a sealed secret copied onto another account's row does not open; a copy of
``index.db`` alone (a backup, a stolen file, a read-only SQL hole) yields no second factor.

Stored text: ``sealed-v2:``, the account's enrolment id (decimal: a random number above 2**128; a
small counter from an earlier build), ``:``, and the URL-safe base64 of a 12-byte random nonce followed by
the ciphertext and its 16-byte tag. The enrolment id is in the associated data too, so it cannot be
changed without the key; :mod:`edge.central.console.enrolments` keeps, outside ``index.db``, the id of each
account's current enrolment, and a secret of another one (put back from a backup) is refused.
``sealed-v1:`` (bound to the account only) and plain secrets were written by older
centrals: sealed as v2 at the first start that records the enrolments, refused after it.

When the key file cannot be read, is missing while sealed secrets or sealed trail rows exist, or is not
the key the store's trails were sealed with (the check value written when the seals began, and the first
sealed rows, do not check with it: a key of another store or another backup), the central does not start
(``edge central run`` exits 78 naming the file, like an unusable signing key): running on would append
every access-log row unsealed, or sealed with a key nothing else in the store checks with. A missing key is
never silently replaced while anything is sealed with it: the operator restores it from backup. A sealed
secret that does not open with the key (moved from another account, damaged) refuses that account's TOTP
sign-ins, and the reason is logged naming the file.

The same file keys the seals of the console's append-only trails (:mod:`edge.central.sqlite.trail`),
through a subkey derived with HKDF, so the two uses never share key material. A starting central also
seals, once, the trail rows of a store made before those seals, and then rewrites the key file as format
v2 (``edge-console-key-v2:``, the same key): the record, outside ``index.db``, that the store's trails
are sealed. From then on a store without its seals was stripped of them: the central never seals its
rows again and `edge verify` names it. A crash between the key's creation and the first sealing leaves a
v1 file, and the next start seals and records. A missing key is never replaced while trail rows are
sealed with it either (every row would then look forged).

The file is written like the station's signing key: a temporary file, fsynced, linked (or renamed, for
the v2 rewrite) into place, its directory fsynced; made by a root-run command it takes the owner of its
directory (the service user of the store).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.durable.files import (
    SmallFileError,
    adopt_owner,
    fsync_dir,
    make_dirs_durable,
    read_small_file,
    remove_stale_temporaries,
    write_new_file,
)

__all__ = [
    "SEALED_PREFIX",
    "SEALED_V1_PREFIX",
    "ConsoleKeyError",
    "ConsoleSecretKey",
    "SealedSecretError",
    "enrolment_id",
    "is_sealed",
    "prepare_console_key",
    "require_console_key",
]

log = logging.getLogger(__name__)

SEALED_PREFIX = "sealed-v2:"
# Sealed by a central before the enrolment ids: bound to the account only (opened to be re-sealed).
SEALED_V1_PREFIX = "sealed-v1:"
_FILE_PREFIX = b"edge-console-key-v1:"
# v2: the same key, and the record (outside index.db) that the store's trails are sealed under it.
_SEALED_FILE_PREFIX = b"edge-console-key-v2:"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TOTP_CONTEXT_V1 = b"edge-console totp-secret v1\x00"
_TOTP_CONTEXT = b"edge-console totp-secret v2\x00"


class ConsoleKeyError(Exception):
    """The console key file is missing, unreadable or malformed; the message names the file."""


class SealedSecretError(Exception):
    """A sealed secret does not open: another key, another account's secret, or damaged text."""


def is_sealed(stored: str) -> bool:
    """Sealed with the console key (either format), not stored in plain text."""
    return stored.startswith((SEALED_PREFIX, SEALED_V1_PREFIX))


def enrolment_id(text: str) -> int | None:
    """The enrolment id written in a sealed secret's text, None when it is not one (at most 40 digits:
    a random id has 39; more would only cost time to convert)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 40 else None


def _totp_context(account: str, enrolment: int) -> bytes:
    return _TOTP_CONTEXT + account.encode("utf-8") + b"\x00" + str(enrolment).encode("ascii")


class ConsoleSecretKey:
    """The 32-byte key of ``identity/console.key``; its repr shows a fingerprint, never the key."""

    def __init__(self, key: bytes, path: Path, *, trails_sealed: bool = False) -> None:
        if len(key) != _KEY_BYTES:
            raise ConsoleKeyError(f"{path}: a console key has {_KEY_BYTES} bytes, found {len(key)}")
        self._aead = AESGCM(key)
        self._trail_key = _subkey(key, b"edge-console trail-seals v1")
        self._session_key = _subkey(key, b"edge-console sessions v1")
        self.fingerprint = hashlib.sha256(_subkey(key, b"edge-console fingerprint v1")).hexdigest()[:16]
        self.path = path
        # True once this file records that the store's trails are sealed under it (file format v2): from
        # then on a store without its seals was stripped of them, never "a store made before them".
        self.trails_sealed = trails_sealed
        self._key = key

    def __repr__(self) -> str:
        return f"ConsoleSecretKey(path={str(self.path)!r}, fingerprint={self.fingerprint!r})"

    @classmethod
    def load(cls, path: Path) -> ConsoleSecretKey:
        try:
            data = read_small_file(path, 256, expected="the console key", private=True)
        except SmallFileError as exc:
            raise ConsoleKeyError(str(exc)) from None
        text = data.strip()
        trails_sealed = text.startswith(_SEALED_FILE_PREFIX)
        prefix = _SEALED_FILE_PREFIX if trails_sealed else _FILE_PREFIX
        if not text.startswith(prefix):
            raise ConsoleKeyError(f"{path}: not a console key (it does not start with "
                                  f"{_FILE_PREFIX.decode()!r} or {_SEALED_FILE_PREFIX.decode()!r})")
        try:
            key = base64.urlsafe_b64decode(text[len(prefix):])
        except (binascii.Error, ValueError):
            raise ConsoleKeyError(f"{path}: the console key is not valid base64") from None
        return cls(key, path, trails_sealed=trails_sealed)

    @classmethod
    def create(cls, path: Path) -> ConsoleSecretKey:
        """A new random key written to ``path`` (mode 0600, the owner of its directory), crash-safely: the
        file appears complete or not at all, and an existing file is never replaced. Format v1: the
        trails are not sealed under it yet (:meth:`record_trails_sealed` follows the first sealing)."""
        key = secrets.token_bytes(_KEY_BYTES)
        _write_key_file(path, _FILE_PREFIX + base64.urlsafe_b64encode(key) + b"\n", replace=False)
        return cls(key, path)

    def record_trails_sealed(self) -> ConsoleSecretKey:
        """Rewrite the file as format v2 (same key, crash-safely: the old or the new file, never a part),
        recording that the store's trails are sealed under it. Called after the sealing committed, so a
        crash in between leaves a v1 file and a sealed store, which the next start records again."""
        if self.trails_sealed:
            return self
        _write_key_file(self.path, _SEALED_FILE_PREFIX + base64.urlsafe_b64encode(self._key) + b"\n",
                        replace=True)
        return ConsoleSecretKey(self._key, self.path, trails_sealed=True)

    def seal_totp(self, account: str, secret: str, *, enrolment: int) -> str:
        """``secret`` sealed for ``account``'s enrolment id ``enrolment`` (see
        :mod:`edge.central.console.enrolments`, which draws them)."""
        if enrolment < 1:
            raise ValueError(f"an enrolment id is 1 or more, not {enrolment}")
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), _totp_context(account, enrolment))
        return f"{SEALED_PREFIX}{enrolment}:" + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open_totp(self, account: str, stored: str) -> tuple[str, int | None]:
        """``(secret, enrolment id)`` of ``account`` from its stored text (the id None: sealed by an
        older central, bound to no enrolment); :class:`SealedSecretError` when it does not open with this
        key for this account and id (or is not sealed at all)."""
        if stored.startswith(SEALED_PREFIX):
            number, _, body = stored[len(SEALED_PREFIX):].partition(":")
            enrolment = enrolment_id(number)
            context = None if enrolment is None else _totp_context(account, enrolment)
        elif stored.startswith(SEALED_V1_PREFIX):
            enrolment, body = None, stored[len(SEALED_V1_PREFIX):]
            context = _TOTP_CONTEXT_V1 + account.encode("utf-8")
        else:
            raise SealedSecretError(f"the TOTP secret of {account} is not sealed (written by an older "
                                    "central)")
        try:
            raw = base64.urlsafe_b64decode(body)
            if context is None or len(raw) <= _NONCE_BYTES + 16:
                raise ValueError("malformed")
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context)
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedSecretError(
                f"the sealed TOTP secret of {account} does not open with console key {self.fingerprint} "
                f"({self.path}): the key is not the one it was sealed with, or the secret was moved from "
                "another account, or its enrolment id or text was changed"
            ) from None
        return plain.decode("ascii"), enrolment

    @property
    def session_key(self) -> bytes:
        """The HMAC key of the console sessions' row keys and row seals (a subkey of its own)."""
        return self._session_key

    @property
    def trail_key(self) -> bytes:
        """The HMAC key of the console trails' seals (a subkey: never the TOTP sealing key itself)."""
        return self._trail_key


def _write_key_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Temporary file, fsync, link (new) or rename (replace), fsync of the directory, like the station's
    signing key (StationKey.save_new). A key made by a root-run command takes the owner of its directory
    (the store's service user), which must be able to read it."""
    try:
        make_dirs_durable(path.parent)  # identity/ of a development store, which has no other key files
        remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        write_new_file(tmp, data, 0o600)
        try:
            adopt_owner(tmp, path.parent)
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(path.parent)
    except FileExistsError:
        raise ConsoleKeyError(f"{path}: cannot create the console key: a file already exists there") from None
    except OSError as exc:
        raise ConsoleKeyError(f"{path}: cannot write the console key: {exc.strerror or exc}") from None


def _subkey(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class TotpSecretStore(Protocol):
    """What :func:`prepare_console_key` needs of the console store."""

    def totp_secrets(self) -> list[tuple[str, str]]: ...
    def accounts_without_totp(self) -> list[str]: ...
    def seal_totp_secret(self, name: str, stored_before: str, sealed: str, *, by: str) -> bool: ...
    def scrub_replaced(self) -> bool: ...
    def seal_trails(self, trail_key: bytes) -> int: ...
    def trail_key_fits(self, trail_key: bytes) -> bool | None: ...
    def trail_seals_state(self) -> tuple[bool, bool]: ...


def prepare_console_key(path: Path, store: TotpSecretStore, *, by: str) -> ConsoleSecretKey | None:
    """The console key at ``path`` for a starting central (or an administration command): loaded, or
    made when missing and nothing in the index is sealed with an old one, and refused when it is not the
    key the store's trails were sealed with. Then, at the first start that keeps the enrolment record,
    every TOTP secret an older central stored (plain, or sealed without an enrolment id) is sealed under a
    new enrolment id (recorded as ``totp_sealed`` by ``by``); at later starts, every secret a sign-in would
    refuse is logged (:func:`edge.central.console.enrolments.prepare_totp_secrets`).

    The trail rows of a store made before the seals are sealed once, and the key file then records that
    they are (format v2, :meth:`ConsoleSecretKey.record_trails_sealed`). On a store whose key records it,
    missing seals are never made again: that would bless whatever was edited while the seals were
    stripped; the error is logged and `edge verify` names it.

    None, with the reason logged as an error, when the key is missing while sealed secrets or sealed trail
    rows exist (a new key would make every one of them look forged), or cannot be read."""
    try:
        return require_console_key(path, store, by=by)
    except ConsoleKeyError as exc:
        log.error("console key unusable: %s", exc)
        return None


def require_console_key(path: Path, store: TotpSecretStore, *, by: str) -> ConsoleSecretKey:
    """:func:`prepare_console_key` for a starting central: :class:`ConsoleKeyError`, naming the file,
    instead of None. The central does not run without it (every access-log row would be unsealed)."""
    stored = store.totp_secrets()
    seals_begun, trails_sealed = store.trail_seals_state()
    if path.exists() or path.is_symlink():
        key = ConsoleSecretKey.load(path)
    elif any(is_sealed(text) for _, text in stored) or trails_sealed:
        raise ConsoleKeyError(f"{path} is missing, but TOTP secrets or console trail rows in the index are "
                              "sealed with it: it is not replaced (a new key would make every sealed row "
                              "look forged); restore it from backup (mode 0600)")
    else:
        key = ConsoleSecretKey.create(path)
        log.info("console key %s created (fingerprint %s): TOTP secrets are sealed with it", path,
                 key.fingerprint)
    if store.trail_key_fits(key.trail_key) is False:
        # Accepting it would seal new rows with a key nothing else in the store checks with, and make
        # `edge verify` name every row as edited.
        raise ConsoleKeyError(f"{path} (fingerprint {key.fingerprint}) is not the key this store's console "
                              "trails were sealed with: neither the check value written when the seals began "
                              "nor the first sealed rows check with it (a key of another store or another "
                              "backup?); restore this store's console.key (mode 0600)")
    if key.trails_sealed and not seals_begun:
        log.error("console: %s records that the trails were sealed, but index.db holds no start of the "
                  "seals: the seals were removed (tampering); they are not made again, `edge verify` "
                  "names the rows", path)
    else:
        old_rows = store.seal_trails(key.trail_key)
        if old_rows:
            log.info("console: %d trail rows made before the seals are now sealed", old_rows)
        try:
            key = key.record_trails_sealed()
        except ConsoleKeyError as exc:
            # The key still works; the record is tried again at the next start.
            log.error("console: cannot record in the key file that the trails are sealed: %s", exc)
    # Imported here: the enrolment record builds on this module's key.
    from edge.central.console.enrolments import prepare_totp_secrets

    prepare_totp_secrets(key, store, stored, by=by)
    return key
