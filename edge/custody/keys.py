"""The station signing key (Ed25519) and public-key helpers.

The signature suite is named by an ``alg`` field wherever a signature is stored ("Ed25519" today), so
another suite (for example SM2/SM3 as Chinese agencies may require, which the ``cryptography`` package
does not offer) can be added beside it without changing record layouts.

The private key lives in one PEM (PKCS#8, unencrypted) file with mode 0600; file permissions are the
protection, as for an SSH host key. A file readable by group or others is refused, never "fixed", so
that an exposure is noticed by a human.
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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.custody.errors import KeyFileError, KeyFormatError
from edge.durable.files import (
    SmallFileError,
    fsync_dir,
    read_small_file,
    remove_stale_temporaries,
    write_new_file,
)

__all__ = [
    "SIGNATURE_ALG",
    "StationKey",
    "key_id_of",
    "load_public_key",
    "public_key_from_b64",
    "public_key_raw",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_ALG = "Ed25519"
_PRIVATE_MODE = 0o600
# The public half is no secret, but it lives in a store, and nothing in a store is for other users
# (it is shared through enrollment bundles and the ledger, not by file mode).
_PUBLIC_MODE = 0o600
# A PEM Ed25519 key is about 120 bytes; anything far larger is not a key file.
_MAX_KEY_FILE_BYTES = 64 * 1024


def public_key_raw(pub: Ed25519PublicKey) -> bytes:
    """The raw 32-byte encoding of ``pub``."""
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(pub: Ed25519PublicKey) -> str:
    """Key id: hex of the first 16 bytes of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(public_key_raw(pub)).digest()[:16].hex()


def public_key_from_b64(b64: str) -> Ed25519PublicKey:
    """Decode a raw Ed25519 public key from standard base64; raises :class:`KeyFormatError`."""
    try:
        raw = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise KeyFormatError(f"expected a base64 Ed25519 public key, found {str(b64)[:60]!r}") from None
    if len(raw) != 32:
        raise KeyFormatError(f"expected a 32-byte Ed25519 public key, found {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def read_pem_file(path: Path, *, what: str, secret: bool) -> bytes:
    """Read a small PEM file (a key or certificate); raises :class:`KeyFileError` saying what is wrong.

    A secret must be a regular file that group and others cannot access; nothing larger than
    64 KiB is read, and a FIFO planted at the path cannot hang the caller (O_NONBLOCK).
    """
    try:
        return read_small_file(path, _MAX_KEY_FILE_BYTES, expected="a small PEM file", private=secret)
    except SmallFileError as exc:
        if exc.exposed:
            raise KeyFileError(
                f"{what} {exc}. The key may be exposed: fix the permissions (chmod 600) only after deciding "
                "whether to replace the key"
            ) from None
        raise KeyFileError(f"{what} {exc}") from None


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM (SubjectPublicKeyInfo) Ed25519 public key; raises :class:`KeyFileError`."""
    data = read_pem_file(path, what="public key", secret=False)
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: expected a PEM public key, found unparseable data ({exc})") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key, found {type(pub).__name__}")
    return pub


def verify_signature(pub: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature by ``pub`` over ``data``."""
    try:
        pub.verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class StationKey:
    """The station's Ed25519 signing key. Its repr shows the key id and path, never key material."""

    __slots__ = ("_private", "_public", "key_id", "path", "public_key_b64")

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self.path = path
        self.key_id: str = key_id_of(self._public)
        self.public_key_b64: str = base64.b64encode(public_key_raw(self._public)).decode("ascii")

    def __repr__(self) -> str:
        return f"StationKey(key_id={self.key_id!r}, path={str(self.path) if self.path else None!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would copy the private key into wherever the pickle goes (caches, queues, logs).
        raise TypeError("StationKey cannot be pickled")

    @classmethod
    def generate(cls) -> StationKey:
        """A fresh key that exists only in memory (tests, ephemeral tools)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, private_path: Path) -> StationKey:
        """Load the key at ``private_path``, creating it (and ``<name>.pub``) on first run.

        Raises :class:`KeyFileError` when the file is readable by group or others, is not a regular
        file, does not hold an unencrypted Ed25519 PKCS#8 PEM key, or when an existing ``.pub`` file
        holds a different key.
        """
        private_path = Path(private_path)
        if not private_path.exists():
            try:
                created = cls._create(private_path)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise KeyFileError(f"cannot create station key {private_path}: {reason}") from exc
            if created is not None:
                return created
            # Another process created it between our check and our link: load theirs.
        key = cls._load(private_path)
        key._ensure_public_file()
        return key

    @classmethod
    def load(cls, private_path: Path) -> StationKey:
        """Load an existing key, without creating or repairing anything (not even the ``.pub`` file).

        Raises :class:`KeyFileError` as :meth:`load_or_create` does, and when the file does not exist.
        Callers that must never replace a key (a store whose ledger the key signed) use this and
        :meth:`create` instead of :meth:`load_or_create`.
        """
        return cls._load(Path(private_path))

    @classmethod
    def create(cls, private_path: Path) -> StationKey:
        """Create a new key file (and its ``.pub``); raises :class:`KeyFileError` when one exists."""
        private_path = Path(private_path)
        try:
            created = cls._create(private_path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise KeyFileError(f"cannot create key {private_path}: {reason}") from exc
        if created is None:
            raise KeyFileError(f"cannot create key {private_path}: a key file already exists there")
        return created

    def save_new(self, private_path: Path) -> None:
        """Write this key (one made by :meth:`generate`) to a new file at ``private_path``, crash-safely:
        the file appears complete or not at all, and an existing file is never replaced."""
        private_path = Path(private_path)
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        remove_stale_temporaries(private_path)
        tmp = private_path.with_name(f".{private_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        write_new_file(tmp, pem, _PRIVATE_MODE)
        try:
            os.link(tmp, private_path)
        except FileExistsError:
            raise KeyFileError(f"cannot write key {private_path}: a file already exists there") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        fsync_dir(private_path.parent)

    def at(self, private_path: Path) -> StationKey:
        """The same key, known to live at ``private_path`` (after its file was moved there)."""
        return StationKey(self._private, Path(private_path))

    def ensure_public_file(self) -> None:
        """Write ``<name>.pub`` when missing; raise :class:`KeyFileError` when it holds another key."""
        self._ensure_public_file()

    @property
    def public_path(self) -> Path | None:
        """Where the PEM public key is written beside the private key (``<name>.pub``)."""
        return None if self.path is None else self.path.with_name(self.path.name + ".pub")

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``."""
        return self._private.sign(data)

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def public_pem(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def _load(cls, path: Path) -> StationKey:
        data = read_pem_file(path, what="station key", secret=True)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError(f"station key {path}: expected an unencrypted key, found an encrypted "
                               "one") from None
        except ValueError:
            # The message of cryptography may quote file content; do not pass it on.
            raise KeyFileError(f"station key {path}: expected a PEM PKCS#8 private key, found "
                               "unparseable data") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"station key {path}: expected an Ed25519 key, found {type(private).__name__}")
        key = cls(private, path)
        log.info("loaded station key %s from %s", key.key_id, path)
        return key

    @classmethod
    def _create(cls, path: Path) -> StationKey | None:
        """Create a key file atomically; None when another process won the race."""
        key = cls(Ed25519PrivateKey.generate(), path)
        try:
            # link() never replaces an existing file, so the key appears complete or not at all.
            key.save_new(path)
        except KeyFileError:
            return None
        log.info("created station key %s at %s", key.key_id, path)
        key._ensure_public_file()
        return key

    def _ensure_public_file(self) -> None:
        pub_path = self.public_path
        if pub_path is None:
            return
        pem = self.public_pem()
        if pub_path.exists():
            try:
                existing = load_public_key(pub_path)
            except KeyFileError as exc:
                raise KeyFileError(f"{exc}; it should hold the public key of {self.path}") from None
            if public_key_raw(existing) != public_key_raw(self._public):
                raise KeyFileError(
                    f"{pub_path} holds key {key_id_of(existing)} but {self.path} is key {self.key_id}: "
                    f"one of the two files was replaced"
                )
            return
        tmp = pub_path.with_name(f".{pub_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        write_new_file(tmp, pem, _PUBLIC_MODE)
        try:
            os.replace(tmp, pub_path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(pub_path.parent)
