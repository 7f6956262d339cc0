"""Content-addressed object storage for accepted evidence.

An object's name is the SHA-256 of its bytes, and only bytes that were hashed to that name are ever
given it: :meth:`FileObjectStore.put_file` either re-reads the finished upload and compares, or takes
the hash the receive path computed on the same pass that wrote the file (:class:`ReceivedContent`),
when the file provably has not changed since (same inode, size, modification and change times, to the
nanosecond: any write or ``utime`` moves the change time); then it makes the file durable and only
then links it into place. Names come from our own hashing or from a validated 64-hex string,
never from a client's path.

Layout (the default, local file system)::

    objects/ab/cd/abcd...   (64 hex digits, mode 0444)

The interface (:class:`ObjectStore`) is small on purpose, so an S3-compatible store with Object Lock
stands in for the local one (:mod:`edge.central.s3_objects`, DESIGN.md "Growing past one machine").
Each object is written with a :class:`Retention` (until when it must be kept, and whether it is under a
legal hold): the S3 store locks it (COMPLIANCE); a local folder has no lock to set, its objects are
read-only files and their protection is the host's (the README says so).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from edge.durable.files import ensure_private_dir, fsync_dir, make_dirs_durable

__all__ = [
    "FileIdentity",
    "FileObjectStore",
    "ObjectCorrupt",
    "ObjectMismatch",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "ReceivedContent",
    "Retention",
    "StoredObject",
    "is_sha256_hex",
]

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK_BYTES = 1 << 20
_OBJECT_MODE = 0o400  # read-only, and the central service user's alone
_TMP_PREFIX = ".incoming-"


def is_sha256_hex(text: object) -> bool:
    """True for 64 lower-case hex digits (the only accepted object name)."""
    return isinstance(text, str) and _SHA256_RE.fullmatch(text) is not None


class ObjectStoreError(Exception):
    """The object store cannot do what was asked (I/O failure, bad name)."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The object store cannot be reached or answers with a server error: nothing was stored, try later."""


class ObjectMismatch(ObjectStoreError):
    """Bytes offered for an object do not hash to the name they were offered under."""

    def __init__(self, expected_sha256: str, found_sha256: str, size_bytes: int) -> None:
        super().__init__(
            f"expected content with SHA-256 {expected_sha256}, found {found_sha256} ({size_bytes} bytes)"
        )
        self.expected_sha256 = expected_sha256
        self.found_sha256 = found_sha256
        self.size_bytes = size_bytes


class ObjectCorrupt(ObjectStoreError):
    """A stored object no longer hashes to its name: the store was damaged or tampered with."""


@dataclass(frozen=True)
class StoredObject:
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file's content can have changed: inode, size, modification and change time
    (ns). The change time cannot be set by a caller: a write followed by ``utime`` still shows."""

    device: int
    inode: int
    size_bytes: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class ReceivedContent:
    """A receive path's word for a finished file: it hashed every byte on the pass that wrote them
    (SHA-256 ``sha256``), made the file durable, and never opened it for writing again; ``identity`` is
    the file as it was right after that (an object store trusts the hash only while the file still
    has this identity)."""

    sha256: str
    identity: FileIdentity


@dataclass(frozen=True)
class Retention:
    """How long an object must be kept: locked (COMPLIANCE) until ``until`` (timezone-aware UTC), and
    under a legal hold, which has no end date, when ``legal_hold`` (permanent evidence)."""

    until: datetime
    legal_hold: bool = False

    def __post_init__(self) -> None:
        if self.until.tzinfo is None:
            raise ValueError("Retention.until must be timezone-aware")


class ObjectStore(Protocol):
    """What the central needs from content storage. Every method is blocking (run it in a thread)."""

    def put_file(
        self,
        source: Path,
        sha256: str,
        retention: Retention | None = None,
        *,
        received: ReceivedContent | None = None,
    ) -> StoredObject:
        """Move ``source`` in as the object ``sha256`` durably (``source`` is gone after success), kept at
        least as ``retention`` says; raises :class:`ObjectMismatch` (``source`` untouched) when its bytes
        hash to something else, :class:`ObjectStoreUnavailable` when the store cannot be reached.
        ``received``: the receive path's hash of ``source`` (see :class:`ReceivedContent`); a store
        that reads the file anyway must not hash it again with SHA-256 while the file keeps its
        identity, and must hash it when it does not (or when ``received`` is None)."""
        ...

    def retain(self, sha256: str, retention: Retention) -> None:
        """Keep the stored object at least as ``retention`` says: an earlier end is extended, a later one
        never shortened; a legal hold once set stays."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def size_bytes(self, sha256: str) -> int: ...

    def open(self, sha256: str) -> BinaryIO:
        """A read-only binary stream of the object; raises FileNotFoundError when absent."""
        ...

    def verify(self, sha256: str) -> str | None:
        """None when the object hashes to its name, else a sentence saying what is wrong."""
        ...

    def reachable(self) -> str | None:
        """None when the store answers (readiness), else a sentence saying why not."""
        ...


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class FileObjectStore:
    """Objects as read-only files under ``root/ab/cd/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ensure_private_dir(root)

    def __repr__(self) -> str:
        return f"FileObjectStore(root={str(self.root)!r})"

    def path_of(self, sha256: str) -> Path:
        """Where an object lives. Raises :class:`ObjectStoreError` for anything but 64 hex digits."""
        if not is_sha256_hex(sha256):
            raise ObjectStoreError(f"expected an object name of 64 lower-case hex digits, found "
                                   f"{str(sha256)[:80]!r}")
        return self.root / sha256[0:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size_bytes(self, sha256: str) -> int:
        return self.path_of(sha256).stat().st_size

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path_of(sha256), "rb")

    def verify(self, sha256: str) -> str | None:
        path = self.path_of(sha256)
        try:
            found, size = _hash_file(path)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"cannot be read: {exc.strerror or exc}"
        if found != sha256:
            return f"content hashes to {found} ({size} bytes), not to its name: the object was altered"
        return None

    def retain(self, sha256: str, retention: Retention) -> None:
        """Nothing to set: a local folder has no retention lock (its objects are read-only files)."""

    def reachable(self) -> str | None:
        return None if self.root.is_dir() else f"{self.root} is not a directory"

    def put_file(
        self,
        source: Path,
        sha256: str,
        retention: Retention | None = None,
        *,
        received: ReceivedContent | None = None,
    ) -> StoredObject:
        """Hash ``source`` (or take ``received``'s hash while the file keeps its identity); when it
        matches ``sha256`` move it durably into place (read-only).

        The move is a hard link followed by removing ``source``, so a multi-gigabyte upload is not
        copied, an existing object is never replaced, and afterwards the object shares its inode with
        nothing another component might still write to or truncate. On success ``source`` is gone; on
        failure it is untouched. When the object already exists it is re-hashed rather than trusted,
        and a damaged one raises :class:`ObjectCorrupt` instead of being silently replaced: the damage
        is evidence of something and an operator must see it.
        """
        final = self.path_of(sha256)
        found, size = self._content_hash(source, received)
        if found != sha256:
            raise ObjectMismatch(sha256, found, size)
        if final.is_file():
            stored = self._existing(final, sha256, size)
            self._drop_source(source)
            return stored
        with open(source, "rb") as stream:
            os.fsync(stream.fileno())
        self._make_dirs(final.parent)
        try:
            os.link(source, final)
        except FileExistsError:
            stored = self._existing(final, sha256, size)
            self._drop_source(source)
            return stored
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            # Uploads on another file system (or a file system without hard links): copy, hashing again.
            self._copy_into_place(source, final, sha256)
        fsync_dir(final.parent)
        # The link is durable; now the source name goes, durably too, before the mode is fixed, so no
        # crash leaves the object reachable through a second, writable name.
        self._drop_source(source)
        os.chmod(final, _OBJECT_MODE)
        with open(final, "rb") as stream:
            os.fsync(stream.fileno())  # the mode change, so a crash cannot leave a writable object
        log.info("object %s stored (%d bytes)", sha256, size)
        return StoredObject(sha256, size)

    @staticmethod
    def _content_hash(source: Path, received: ReceivedContent | None) -> tuple[str, int]:
        """(SHA-256, size) of ``source``: the receive path's when the file is still the one it hashed,
        else read and hashed here."""
        if received is not None:
            st = source.stat()
            if FileIdentity.of(st) == received.identity:
                return received.sha256, st.st_size
            log.warning(
                "%s changed after its receive path hashed it (identity %s, now %s): hashing it again",
                source.name, received.identity, FileIdentity.of(st),
            )
        return _hash_file(source)

    @staticmethod
    def _drop_source(source: Path) -> None:
        source.unlink(missing_ok=True)
        fsync_dir(source.parent)

    def _existing(self, final: Path, sha256: str, size: int) -> StoredObject:
        problem = self.verify(sha256)
        if problem is not None:
            log.error("object %s is damaged (%s); refusing to store new content over it", sha256, problem)
            raise ObjectCorrupt(f"stored object {sha256} {problem}; run `edge verify` on the central store")
        log.info("object %s already stored; content identical", sha256)
        return StoredObject(sha256, size)

    def _make_dirs(self, directory: Path) -> None:
        # Each new directory entry must be durable before the link inside it is.
        make_dirs_durable(directory)

    def _copy_into_place(self, source: Path, final: Path, sha256: str) -> None:
        tmp = final.with_name(f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        digest = hashlib.sha256()
        size = 0
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            with open(source, "rb") as src, open(os.open(tmp, flags, 0o600), "wb") as dst:
                while chunk := src.read(_READ_CHUNK_BYTES):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != sha256:
                raise ObjectMismatch(sha256, digest.hexdigest(), size)
            # link() never replaces: a concurrent put of the same object wins harmlessly.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def names(self) -> Iterator[str]:
        """Every well-placed object name, in sorted order (for verification)."""
        for _, name in self._walk():
            if name is not None:
                yield name

    def unexpected(self) -> Iterator[Path]:
        """Files and directories that are not a well-placed object (planted, or left by a crash)."""
        for path, name in self._walk():
            if name is None:
                yield path

    def _walk(self) -> Iterator[tuple[Path, str | None]]:
        hex2 = re.compile(r"[0-9a-f]{2}")
        for top in sorted(self.root.iterdir()):
            if not (top.is_dir() and not top.is_symlink() and hex2.fullmatch(top.name)):
                yield top, None
                continue
            for mid in sorted(top.iterdir()):
                if not (mid.is_dir() and not mid.is_symlink() and hex2.fullmatch(mid.name)):
                    yield mid, None
                    continue
                for leaf in sorted(mid.iterdir()):
                    placed = (
                        is_sha256_hex(leaf.name)
                        and leaf.name[0:2] == top.name
                        and leaf.name[2:4] == mid.name
                        and stat.S_ISREG(leaf.lstat().st_mode)
                    )
                    yield leaf, (leaf.name if placed else None)
