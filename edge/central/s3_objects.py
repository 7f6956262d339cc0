"""Content objects in an S3-compatible bucket with Object Lock (Ceph RGW on premises, or AWS S3).

The same contract as :class:`edge.central.objects.FileObjectStore`, with the bucket's WORM lock as the
protection a local folder lacks:

* **Object Lock or nothing.** :meth:`S3ObjectStore.check_bucket` (run at start) refuses a bucket without
  Object Lock enabled (and so without versioning): on such a bucket anyone with the keys could delete
  evidence.
* **Every version locked.** Each object is written with COMPLIANCE retention until the end of its
  retention class; then the written version's lock is read back and, when it falls short, set on that
  version explicitly and read back again, because some servers ignore the lock headers of a multipart
  upload (Ceph RGW 16.2 does: measured). Permanent
  evidence gets a legal hold too. :meth:`S3ObjectStore.retain` extends a lock and never shortens it
  (COMPLIANCE would refuse a shorter date anyway).
* **Our own hash, once.** Some servers accept ``x-amz-checksum-sha256`` without checking it, so the central
  relies on its own SHA-256: the receive path's, computed as the upload was written
  (:class:`~edge.central.objects.ReceivedContent`), while the file keeps the identity it vouches for
  (checked before the first byte is sent and after the last, before the object is completed); without
  that vouch the bytes are hashed on the same pass that sends them. ``Content-MD5``, computed on that
  read, goes with every request body for transport integrity (every S3 server checks that). Content
  whose SHA-256 is not its name never becomes an object: a multipart upload is aborted before it is
  completed.
* **Bounded memory, no second copy.** The upload file is read once, one part at a time
  (``part_size_mb``), straight into the bucket; nothing is copied on local disk.
* **Deletion shows.** The bucket is versioned, so a DELETE by someone with credentials only adds a delete
  marker (the locked version stays); :meth:`S3ObjectStore.verify` and :meth:`S3ObjectStore.audit` name
  such markers and any version whose bytes are not the name's.

boto3 is synchronous; like the local store every method blocks and the central runs them in threads
(botocore clients are thread-safe). Server quirks are configuration (:class:`S3ObjectsConfig`): path-style
addressing, ``checksum_mode`` for boto3 >= 1.36, whose default CRC trailers some servers refuse, and
``payload_signing`` (whether botocore hashes each body once more for its SigV4 signature; over https it
does not by default).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edge.central.config import S3ObjectsConfig
from edge.central.objects import (
    FileIdentity,
    ObjectCorrupt,
    ObjectMismatch,
    ObjectStoreError,
    ObjectStoreUnavailable,
    ReceivedContent,
    Retention,
    StoredObject,
    is_sha256_hex,
)
from edge.durable.files import fsync_dir

__all__ = ["CopySource", "S3ObjectStore"]

log = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 1 << 20
_RANGE_BYTES = 8 << 20  # one ranged GET of a whole-object read
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})
_LOCK_MODE = "COMPLIANCE"
# What servers answer for a version without a retention or a legal hold (RGW 16.2: 404
# ObjectLockConfigurationNotFoundError for a version never held).
_NO_LOCK = frozenset({"NoSuchObjectLockConfiguration", "ObjectLockConfigurationNotFoundError",
                      "InvalidRequest"})


@dataclass(frozen=True)
class CopySource:
    """One object version that a server-side copy reads (:meth:`S3ObjectStore.put_copies`), in ``bucket``:
    the content bucket or the staging bucket of the tus parts (same endpoint and keys)."""

    key: str
    version_id: str
    size: int
    bucket: str


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _lock_headers(retention: Retention | None) -> dict[str, Any]:
    """The Object Lock arguments of a write (none without a retention). The date is rounded up to the
    whole second: the header carries whole seconds (RGW keeps 07:53:24 of 07:53:24.25, measured), and a
    lock one fraction of a second short of the class would fail the read-back and be written again."""
    if retention is None:
        return {}
    until = retention.until
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    lock: dict[str, Any] = {"ObjectLockMode": _LOCK_MODE, "ObjectLockRetainUntilDate": until}
    if retention.legal_hold:
        lock["ObjectLockLegalHoldStatus"] = "ON"
    return lock


def _holds(mode: str | None, until: datetime | None, held: bool, retention: Retention) -> bool:
    """Whether a version's lock, as the bucket reports it, is at least what ``retention`` asks."""
    long_enough = mode == _LOCK_MODE and until is not None and until >= retention.until
    return long_enough and (held or not retention.legal_hold)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the file)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class _VouchBroken(Exception):
    """The file changed while it was being sent under the receive path's hash (nothing was completed)."""


class _Vouch:
    """Whether the receive path's hash (:class:`ReceivedContent`) speaks for the bytes read from an open
    file: it does while the file has the identity the vouch names (inode, size, modification and change
    times), before the first byte is read and after the last."""

    def __init__(self, name: str, received: ReceivedContent | None) -> None:
        self.name = name
        self.received = received

    @property
    def holds(self) -> bool:
        return self.received is not None

    @classmethod
    def of(cls, stream: BinaryIO, source: Path, received: ReceivedContent | None) -> _Vouch:
        if received is not None:
            now = FileIdentity.of(os.fstat(stream.fileno()))
            if now != received.identity:
                log.warning("%s changed after its receive path hashed it (identity %s, now %s): hashing it "
                            "again", source.name, received.identity, now)
                received = None
        return cls(source.name, received)

    def check_unchanged(self, stream: BinaryIO) -> None:
        """Raise :class:`_VouchBroken` when the vouch held and the file changed while it was read."""
        if self.received is None:
            return
        now = FileIdentity.of(os.fstat(stream.fileno()))
        if now != self.received.identity:
            log.warning("%s changed while it was sent (identity %s, now %s): the upload is abandoned and "
                        "the file sent again, hashed", self.name, self.received.identity, now)
            raise _VouchBroken(self.name)


class S3ObjectStore:
    """Objects as ``<prefix><sha256>`` in a bucket with Object Lock; see the module docstring."""

    def __init__(self, config: S3ObjectsConfig, secret_access_key: str) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.part_size = config.part_size_bytes
        s3_options: dict[str, Any] = {"addressing_style": config.addressing_style}
        if config.sign_payload is not None:
            # False: UNSIGNED-PAYLOAD, so botocore does not hash every part once more for the signature
            # (over plain http it otherwise does); Content-MD5 still goes with every body.
            s3_options["payload_signing_enabled"] = config.sign_payload
        botocore_config = Config(
            region_name=config.region,
            signature_version="s3v4",
            s3=s3_options,
            request_checksum_calculation=config.checksum_mode,
            response_checksum_validation=config.checksum_mode,
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            retries={"max_attempts": config.max_attempts, "mode": "standard"},
        )
        # botocore clients are generated at run time: typed Any (no stub package is a dependency).
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=config.endpoint, aws_access_key_id=config.access_key_id,
            aws_secret_access_key=secret_access_key, config=botocore_config,
            verify=str(config.ca_file) if config.ca_file is not None else True,
        )

    def __repr__(self) -> str:  # never the keys
        return (f"S3ObjectStore(endpoint={self.config.endpoint!r}, bucket={self.bucket!r}, "
                f"prefix={self.prefix!r})")

    # -- names and errors ------------------------------------------------------------------------

    def key_of(self, sha256: str) -> str:
        if not is_sha256_hex(sha256):
            raise ObjectStoreError(f"expected an object name of 64 lower-case hex digits, found "
                                   f"{str(sha256)[:80]!r}")
        return f"{self.prefix}{sha256}"

    def _failure(self, exc: Exception, what: str, bucket: str | None = None) -> ObjectStoreError:
        """The store's error for a failed request on ``bucket`` (default: the content bucket): unavailable
        (try later) or refused (a fact)."""
        where = f"bucket {bucket or self.bucket} at {self.config.endpoint}"
        if isinstance(exc, ClientError):
            status = _status(exc)
            if status >= 500 or status == 0:
                return ObjectStoreUnavailable(f"{what}: {where} answered {status} {_code(exc)}")
            return ObjectStoreError(f"{what}: {where} refused: {status} {_code(exc)}")
        return ObjectStoreUnavailable(f"{what}: {where} cannot be reached: {type(exc).__name__}: {exc}")

    # -- start -----------------------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Refuse (ObjectStoreError) a bucket without Object Lock; ObjectStoreUnavailable when it cannot
        be asked."""
        try:
            lock = self.client.get_object_lock_configuration(Bucket=self.bucket)
            versioning = self.client.get_bucket_versioning(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("ObjectLockConfigurationNotFoundError", "InvalidRequest"):
                raise ObjectStoreError(
                    f"bucket {self.bucket} at {self.config.endpoint} has no Object Lock: evidence there "
                    "could be deleted or overwritten by anyone with the keys. Create the bucket with Object "
                    "Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket, or "
                    "ObjectLockEnabledForBucket=True)") from None
            raise self._failure(exc, "checking Object Lock") from None
        except BotoCoreError as exc:
            raise self._failure(exc, "checking Object Lock") from None
        enabled = lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise ObjectStoreError(f"bucket {self.bucket} at {self.config.endpoint}: Object Lock is "
                                   f"{enabled or 'not enabled'}, expected Enabled")
        if versioning.get("Status") != "Enabled":
            raise ObjectStoreError(f"bucket {self.bucket}: versioning is {versioning.get('Status', 'off')}, "
                                   "expected Enabled (Object Lock needs it)")
        default = lock.get("ObjectLockConfiguration", {}).get("Rule", {}).get("DefaultRetention", {})
        if default.get("Mode") != _LOCK_MODE:
            # Each object is locked explicitly after it is written; until then (a crash in between) only a
            # bucket default keeps it. RGW 16.2 applies the default to multipart uploads too (measured).
            log.warning("bucket %s has no default COMPLIANCE retention: an object the central writes is "
                        "unlocked for the moment between its upload and its lock (after a crash in between, "
                        "until `edge verify` names it); set a default retention of at least 1 day",
                        self.bucket)
        log.info("object store: bucket %s at %s has Object Lock enabled", self.bucket, self.config.endpoint)
        if self.config.staging_bucket is not None:
            self._check_staging_bucket(self.config.staging_bucket)

    def _check_staging_bucket(self, bucket: str) -> None:
        """Refuse (ObjectStoreError) a staging bucket the tus parts cannot live in: missing, unversioned
        (a part is addressed by its version), or with Object Lock (a default retention there would lock
        the parts the purge must delete)."""
        try:
            versioning = self.client.get_bucket_versioning(Bucket=bucket)
            try:
                lock = self.client.get_object_lock_configuration(Bucket=bucket)
            except ClientError as exc:
                if _code(exc) not in ("ObjectLockConfigurationNotFoundError", "InvalidRequest"):
                    raise
                lock = {}
        except ClientError as exc:
            if _code(exc) in ("NoSuchBucket", "404"):
                raise ObjectStoreError(f"staging_bucket {bucket} does not exist at {self.config.endpoint}: "
                                       "create it (versioned, without Object Lock) or leave staging_bucket "
                                       "empty") from None
            raise self._failure(exc, f"checking staging bucket {bucket}") from None
        except BotoCoreError as exc:
            raise self._failure(exc, f"checking staging bucket {bucket}") from None
        if lock.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled":
            raise ObjectStoreError(
                f"staging_bucket {bucket} has Object Lock: a default retention there locks the parts of "
                "unfinished uploads, which the purge must delete. Use a bucket created without Object Lock")
        if versioning.get("Status") != "Enabled":
            raise ObjectStoreError(
                f"staging_bucket {bucket}: versioning is {versioning.get('Status', 'off')}, expected Enabled "
                "(each part is addressed by its version): aws s3api put-bucket-versioning --bucket "
                f"{bucket} --versioning-configuration Status=Enabled")
        log.info("tus staging: bucket %s (versioned, no Object Lock) holds the parts of unfinished uploads",
                 bucket)

    def reachable(self) -> str | None:
        """None when the bucket answers, else a sentence (readiness)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            return str(self._failure(exc, "head bucket"))
        return None

    # -- reads -----------------------------------------------------------------------------------

    def _head(self, sha256: str, version_id: str | None = None) -> dict[str, Any] | None:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key_of(sha256)}
        if version_id is not None:
            arguments["VersionId"] = version_id
        try:
            return dict(self.client.head_object(**arguments))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self._failure(exc, f"head object {sha256}") from None
        except BotoCoreError as exc:
            raise self._failure(exc, f"head object {sha256}") from None

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def stored_as(self, sha256: str) -> tuple[int, str | None] | None:
        """(size, the SHA-256 it was written with, as the central records it in the object's metadata) of
        the current version; None when there is none. A claim, not a check: :meth:`verify` hashes."""
        head = self._head(sha256)
        if head is None:
            return None
        metadata = head.get("Metadata") or {}
        claimed = metadata.get("sha256")
        return int(head["ContentLength"]), claimed if isinstance(claimed, str) else None

    def size_bytes(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(f"object {sha256} is not in bucket {self.bucket}")
        return int(head["ContentLength"])

    def open(self, sha256: str) -> BinaryIO:
        head = self._head(sha256)
        if head is None:
            raise FileNotFoundError(f"object {sha256} is not in bucket {self.bucket}")
        return self.open_version(sha256, str(head["VersionId"]), int(head["ContentLength"]))

    def current_version(self, sha256: str) -> tuple[str, int] | None:
        """``(version id, size)`` of the object's current version; None when it has none."""
        head = self._head(sha256)
        return None if head is None else (str(head["VersionId"]), int(head["ContentLength"]))

    def open_version(self, sha256: str, version_id: str, size: int) -> BinaryIO:
        """A seekable read-only stream of one version (``size`` bytes), each read one HTTP Range request;
        read errors raise OSError."""
        return io.BufferedReader(_RangedReader(self, self.key_of(sha256), version_id, size),
                                 buffer_size=_READ_CHUNK_BYTES)

    def verify_version(self, sha256: str, version_id: str) -> str | None:
        """None when that version hashes to the name, else a sentence saying what is wrong."""
        try:
            found, size = self._hash_version(sha256, version_id)
        except FileNotFoundError:
            return "missing: that version is gone"
        if found != sha256:
            return f"content hashes to {found} ({size} bytes), not to its name: the object was altered"
        return None

    def _hash_version(self, sha256: str, version_id: str | None) -> tuple[str, int]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key_of(sha256)}
        if version_id is not None:
            arguments["VersionId"] = version_id
        digest = hashlib.sha256()
        size = 0
        try:
            body = self.client.get_object(**arguments)["Body"]
            try:
                for chunk in body.iter_chunks(_READ_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            finally:
                body.close()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise FileNotFoundError(f"object {sha256} is not in bucket {self.bucket}") from None
            raise self._failure(exc, f"read object {sha256}") from None
        except BotoCoreError as exc:
            raise self._failure(exc, f"read object {sha256}") from None
        return digest.hexdigest(), size

    def verify(self, sha256: str) -> str | None:
        """Hash the current version; when there is none, say what the version history shows."""
        try:
            found, size = self._hash_version(sha256, None)
        except FileNotFoundError:
            return self._missing(sha256)
        except ObjectStoreError as exc:
            return f"cannot be read: {exc}"
        if found != sha256:
            return f"content hashes to {found} ({size} bytes), not to its name: the object was altered"
        return None

    def _versions(self, sha256: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(versions, delete markers) of one object's key, newest first."""
        key = self.key_of(sha256)
        versions: list[dict[str, Any]] = []
        markers: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
            versions += [dict(v) for v in page.get("Versions", []) if v.get("Key") == key]
            markers += [dict(m) for m in page.get("DeleteMarkers", []) if m.get("Key") == key]
        return versions, markers

    def _missing(self, sha256: str) -> str:
        try:
            versions, markers = self._versions(sha256)
        except (ClientError, BotoCoreError) as exc:
            return f"missing (and its version history cannot be read: {self._failure(exc, 'list versions')})"
        if markers:
            kept = f"{len(versions)} earlier version(s) remain in the bucket" if versions else \
                "no version remains"
            newest = max(markers, key=lambda m: m.get("LastModified") or datetime.min.replace(tzinfo=UTC))
            return (f"missing: its latest version is a delete marker ({newest.get('VersionId')}, "
                    f"{newest.get('LastModified')}): someone with credentials deleted it; {kept}")
        return "missing: the bucket holds no version of it"

    # -- writes ----------------------------------------------------------------------------------

    def put_file(
        self,
        source: Path,
        sha256: str,
        retention: Retention | None = None,
        *,
        received: ReceivedContent | None = None,
    ) -> StoredObject:
        """Send ``source`` as object ``sha256`` (locked), then remove ``source``.

        SHA-256 once on the central: ``received`` (the receive path's hash,
        :class:`~edge.central.objects.ReceivedContent`) is taken while the opened file still has the
        identity it vouches for, checked before the first byte is read and again after the last, before
        the object is completed; otherwise (no vouch, or the file changed) every part is hashed on the
        one read that sends it. ``Content-MD5`` goes with every part either way, computed on that read.
        An existing object is re-hashed rather than trusted (a damaged one raises :class:`ObjectCorrupt`
        and is left for an operator), and its lock extended to ``retention``."""
        if received is not None and received.sha256 != sha256:
            # The vouch names other content than the object's name: trusting it would store bytes that
            # hash to one value as the object of another, locked. Refused before anything is sent, as
            # FileObjectStore.put_file refuses it.
            raise ObjectMismatch(sha256, received.sha256, os.stat(source).st_size)
        key = self.key_of(sha256)
        if self._head(sha256) is not None:
            return self._put_existing(source, sha256, retention, received)
        lock = _lock_headers(retention)
        with open(source, "rb") as stream:
            vouch = _Vouch.of(stream, source, received)
            size = os.fstat(stream.fileno()).st_size
            try:
                if size <= self.part_size:
                    version = self._put_single(stream, key, sha256, lock, vouch)
                else:
                    version = self._put_multipart(stream, key, sha256, lock, vouch)
            except _VouchBroken:
                version = None
        if version is None:  # the file changed while it was sent: nothing was completed; hash it this time
            return self.put_file(source, sha256, retention)
        if retention is not None:
            self._lock_version(sha256, version, retention)
        self._drop_source(source)
        log.info("object %s stored in bucket %s (%d bytes, version %s, locked until %s%s; SHA-256 %s)",
                 sha256, self.bucket, size, version, retention.until.isoformat() if retention else "-",
                 ", legal hold" if retention and retention.legal_hold else "",
                 "as received" if vouch.holds else "computed while sending")
        return StoredObject(sha256, size)

    def _put_existing(
        self, source: Path, sha256: str, retention: Retention | None, received: ReceivedContent | None
    ) -> StoredObject:
        with open(source, "rb") as stream:
            vouch = _Vouch.of(stream, source, received)
            size = os.fstat(stream.fileno()).st_size
            found = sha256 if vouch.holds else None
        if found is None:
            found, size = _hash_file(source)
        if found != sha256:
            log.warning("object %s: refused content hashing to %s (%d bytes) offered over the stored "
                        "object", sha256, found, size)
            raise ObjectMismatch(sha256, found, size)
        problem = self.verify(sha256)
        if problem is not None:
            log.error("object %s in bucket %s is damaged (%s); refusing to store new content over it",
                      sha256, self.bucket, problem)
            raise ObjectCorrupt(f"stored object {sha256} {problem}; run `edge verify` on the central store")
        if retention is not None:
            self.retain(sha256, retention)
        self._drop_source(source)
        log.info("object %s already stored in bucket %s; content identical", sha256, self.bucket)
        return StoredObject(sha256, size)

    def copy_in(self, source: Path, sha256: str, retention: Retention) -> StoredObject:
        """Send a copy of ``source`` as the new object ``sha256``, locked as ``retention`` says, leaving
        ``source`` in place (`edge central migrate` copies a local store's objects). The bytes are hashed on
        the one read that sends them: content that does not hash to ``sha256`` raises
        :class:`ObjectMismatch` and never becomes an object. The caller has checked the object is absent."""
        lock = _lock_headers(retention)
        key = self.key_of(sha256)
        unvouched = _Vouch(source.name, None)
        with open(source, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size <= self.part_size:
                version = self._put_single(stream, key, sha256, lock, unvouched)
            else:
                version = self._put_multipart(stream, key, sha256, lock, unvouched)
        self._lock_version(sha256, version, retention)
        return StoredObject(sha256, size)

    def _put_single(
        self, stream: BinaryIO, key: str, sha256: str, lock: dict[str, Any], vouch: _Vouch
    ) -> str:
        data = _read_full(stream, self.part_size + 1)
        vouch.check_unchanged(stream)
        found = sha256 if vouch.holds else hashlib.sha256(data).hexdigest()
        if found != sha256:
            log.warning("object %s: refused content hashing to %s (%d bytes); nothing was sent", sha256,
                        found, len(data))
            raise ObjectMismatch(sha256, found, len(data))
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                            ContentMD5=_md5_b64(data), Metadata={"sha256": sha256}, **lock)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"put object {sha256}") from None
        return str(answer.get("VersionId", ""))

    def _put_multipart(
        self, stream: BinaryIO, key: str, sha256: str, lock: dict[str, Any], vouch: _Vouch
    ) -> str:
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                            Metadata={"sha256": sha256}, **lock)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"start multipart upload of {sha256}") from None
        completed = False
        try:
            digest = None if vouch.holds else hashlib.sha256()
            size = 0
            parts: list[dict[str, Any]] = []
            while data := _read_full(stream, self.part_size):
                if digest is not None:
                    digest.update(data)
                size += len(data)
                number = len(parts) + 1
                try:
                    answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                     PartNumber=number, Body=data, ContentMD5=_md5_b64(data))
                except (ClientError, BotoCoreError) as exc:
                    raise self._failure(exc, f"upload part {number} of {sha256}") from None
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            vouch.check_unchanged(stream)
            found = sha256 if digest is None else digest.hexdigest()
            if found != sha256:
                log.warning("object %s: refused content hashing to %s (%d bytes); its multipart upload is "
                            "aborted, never completed", sha256, found, size)
                raise ObjectMismatch(sha256, found, size)
            version = self._complete_multipart(key, upload_id, parts, sha256)
            completed = True
            return version
        finally:
            if not completed:
                self._abort_multipart(key, upload_id, sha256)

    def _complete_multipart(self, key: str, upload_id: str, parts: list[dict[str, Any]], sha256: str) -> str:
        """Completes a multipart upload; its new version's id."""
        try:
            done = self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"complete multipart upload of {sha256}") from None
        return str(done.get("VersionId", ""))

    def _abort_multipart(self, key: str, upload_id: str, sha256: str) -> None:
        """Aborts a multipart upload that did not complete; a failure is only logged (the bucket's
        lifecycle rule or an operator removes what is left)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("multipart upload %s of object %s could not be aborted: %s", upload_id, sha256, exc)

    def _current_version(self, sha256: str) -> str:
        head = self._head(sha256)
        if head is None:
            raise ObjectStoreError(f"object {sha256} is not in bucket {self.bucket}")
        return str(head["VersionId"])

    def retain(self, sha256: str, retention: Retention) -> None:
        """Every version of the object, not only the current one: after a delete marker or a foreign PUT
        the version holding the evidence is an earlier one, and extending a lock is never wrong."""
        try:
            versions, _ = self._versions(sha256)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"list the versions of {sha256}") from None
        if not versions:
            raise ObjectStoreError(f"object {sha256} has no version in bucket {self.bucket} to lock")
        for version in versions:
            self._lock_version(sha256, str(version["VersionId"]), retention)

    def retention_of(
        self, sha256: str, version_id: str | None = None
    ) -> tuple[str | None, datetime | None, bool]:
        """(lock mode, retain-until, legal hold on) of a version (the current one by default)."""
        version = version_id or self._current_version(sha256)
        key = self.key_of(sha256)
        try:
            lock = self.client.get_object_retention(Bucket=self.bucket, Key=key, VersionId=version)
            mode: str | None = lock["Retention"].get("Mode")
            until: datetime | None = lock["Retention"].get("RetainUntilDate")
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND | _NO_LOCK:
                raise self._failure(exc, f"read the retention of {sha256}") from None
            mode, until = None, None
        except BotoCoreError as exc:
            raise self._failure(exc, f"read the retention of {sha256}") from None
        try:
            hold = self.client.get_object_legal_hold(Bucket=self.bucket, Key=key, VersionId=version)
            held = hold.get("LegalHold", {}).get("Status") == "ON"
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND | _NO_LOCK:
                raise self._failure(exc, f"read the legal hold of {sha256}") from None
            held = False
        except BotoCoreError as exc:
            raise self._failure(exc, f"read the legal hold of {sha256}") from None
        return mode, until, held

    def _lock_version(self, sha256: str, version: str, retention: Retention) -> None:
        """Lock one version at least as ``retention`` says, and read the lock back. A version that already
        reads back as locked long enough (a single PUT with the lock headers) is left as it is: that first
        read is the check, and reading the same lock again would only cost two requests per object."""
        key = self.key_of(sha256)
        mode, until, held = self.retention_of(sha256, version)
        if _holds(mode, until, held, retention):
            return
        try:
            if mode != _LOCK_MODE or until is None or until < retention.until:
                self.client.put_object_retention(
                    Bucket=self.bucket, Key=key, VersionId=version,
                    Retention={"Mode": "COMPLIANCE", "RetainUntilDate": retention.until},
                )
                if until is not None:
                    log.info("object %s: retention extended from %s to %s", sha256, until.isoformat(),
                             retention.until.isoformat())
            if retention.legal_hold and not held:
                self.client.put_object_legal_hold(Bucket=self.bucket, Key=key, VersionId=version,
                                                  LegalHold={"Status": "ON"})
                log.info("object %s: legal hold set (permanent evidence)", sha256)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"lock object {sha256}") from None
        mode, until, held = self.retention_of(sha256, version)
        if not _holds(mode, until, held, retention):
            raise ObjectStoreError(
                f"object {sha256} version {version}: the bucket reports lock {mode} until {until} "
                f"(legal hold {'on' if held else 'off'}), not COMPLIANCE until {retention.until.isoformat()}"
                f"{' with a legal hold' if retention.legal_hold else ''}")

    # -- server-side assembly (the shared tus store, edge.central.postgres.tus_shared_store) -------------

    def failure(self, exc: Exception, what: str, bucket: str | None = None) -> ObjectStoreError:
        """The store's error for a failed request of another component on this bucket, or on ``bucket``
        (the staging bucket: same endpoint and keys)."""
        return self._failure(exc, what, bucket)

    def put_copies(
        self, sources: Sequence[CopySource], sha256: str, retention: Retention | None = None
    ) -> StoredObject:
        """Make object ``sha256`` from ``sources`` (object versions in this bucket or the staging bucket, in
        order) by server-side copies (UploadPartCopy into a multipart upload with the lock headers): no
        byte passes through the central. The caller vouches that the sources' bytes hash to ``sha256``
        (it hashed them as they arrived, or read them back once). Every source but the last must be at
        least 5 MiB (S3's part minimum). The object is locked as :meth:`put_file` locks it, and an existing
        object is verified rather than trusted (:class:`ObjectCorrupt`), its lock extended. A missing
        source raises ``FileNotFoundError``."""
        size = sum(source.size for source in sources)
        if self._head(sha256) is not None:
            problem = self.verify(sha256)
            if problem is not None:
                log.error("object %s in bucket %s is damaged (%s); refusing to store new content over it",
                          sha256, self.bucket, problem)
                raise ObjectCorrupt(
                    f"stored object {sha256} {problem}; run `edge verify` on the central store")
            if retention is not None:
                self.retain(sha256, retention)
            log.info("object %s already stored in bucket %s; content identical", sha256, self.bucket)
            return StoredObject(sha256, self.size_bytes(sha256))
        key = self.key_of(sha256)
        lock = _lock_headers(retention)
        if not sources:
            try:
                answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=b"",
                                                ContentMD5=_md5_b64(b""), Metadata={"sha256": sha256}, **lock)
            except (ClientError, BotoCoreError) as exc:
                raise self._failure(exc, f"put object {sha256}") from None
            version = str(answer.get("VersionId", ""))
        else:
            version = self._copy_multipart(sources, key, sha256, lock)
        head = self._head(sha256, version or None)
        if head is None or int(head["ContentLength"]) != size:
            found = None if head is None else int(head["ContentLength"])
            raise ObjectStoreError(
                f"object {sha256}: the server-side copy holds {found} bytes, expected {size}")
        if retention is not None:
            self._lock_version(sha256, version, retention)
        log.info("object %s stored in bucket %s by server-side copy of %d part(s) (%d bytes, version %s, "
                 "locked until %s%s)", sha256, self.bucket, len(sources), size, version,
                 retention.until.isoformat() if retention else "-",
                 ", legal hold" if retention and retention.legal_hold else "")
        return StoredObject(sha256, size)

    def _copy_multipart(
        self, sources: Sequence[CopySource], key: str, sha256: str, lock: dict[str, Any]
    ) -> str:
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                            Metadata={"sha256": sha256}, **lock)["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"start multipart upload of {sha256}") from None
        completed = False
        try:
            parts: list[dict[str, Any]] = []
            for number, source in enumerate(sources, start=1):
                try:
                    answer = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        CopySource={"Bucket": source.bucket, "Key": source.key,
                                    "VersionId": source.version_id})
                except ClientError as exc:
                    if _code(exc) in _NOT_FOUND:
                        raise FileNotFoundError(f"{source.key} version {source.version_id} is not in bucket "
                                                f"{source.bucket}") from None
                    raise self._failure(exc, f"copy part {number} of {sha256}") from None
                except BotoCoreError as exc:
                    raise self._failure(exc, f"copy part {number} of {sha256}") from None
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            version = self._complete_multipart(key, upload_id, parts, sha256)
            completed = True
            return version
        finally:
            if not completed:
                self._abort_multipart(key, upload_id, sha256)

    @staticmethod
    def _drop_source(source: Path) -> None:
        source.unlink(missing_ok=True)
        fsync_dir(source.parent)

    # -- verification ----------------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        """Every object name with a current version, in key order."""
        for key in self._keys():
            name = key[len(self.prefix):]
            if is_sha256_hex(name):
                yield name

    def _keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for entry in page.get("Contents", []):
                    yield str(entry["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "list objects") from None

    def audit(self) -> Iterator[tuple[str, str]]:
        """``(where, what)`` for everything in the bucket's version history under the prefix that is not a
        locked version of an object stored under its name: keys that are not names, delete markers, and
        versions without a COMPLIANCE lock. (The content of each current version is checked by
        :meth:`verify`.)"""
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for marker in page.get("DeleteMarkers", []):
                    yield (f"object {str(marker['Key'])[len(self.prefix):][:80]}",
                           f"delete marker {marker.get('VersionId')} of {marker.get('LastModified')}: "
                           "someone with credentials deleted it (the locked versions stay)")
                for version in page.get("Versions", []):
                    name = str(version["Key"])[len(self.prefix):]
                    if not is_sha256_hex(name):
                        yield (f"bucket key {str(version['Key'])[:120]!r}",
                               "unexpected: not an object stored under its SHA-256 name (planted)")
                        continue
                    mode, _, held = self.retention_of(name, str(version["VersionId"]))
                    if mode != _LOCK_MODE and not held:
                        yield (f"object {name}", f"version {version.get('VersionId')} is not locked "
                               f"(mode {mode}): it could be deleted")
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, "list object versions") from None


class _RangedReader(io.RawIOBase):
    """A seekable read-only view of one object version, read by HTTP Range requests."""

    def __init__(self, store: S3ObjectStore, key: str, version_id: str, size: int) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._version = version_id
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readall(self) -> bytes:
        # RawIOBase.readall would ask in 8 KiB reads: one HTTP request each.
        parts: list[bytes] = []
        while self._position < self._size:
            chunk = bytearray(min(_RANGE_BYTES, self._size - self._position))
            got = self.readinto(chunk)
            if got == 0:
                break
            parts.append(bytes(chunk[:got]))
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._position >= self._size or len(view) == 0:
            return 0
        last = min(self._size, self._position + len(view)) - 1
        try:
            body = self._store.client.get_object(
                Bucket=self._store.bucket, Key=self._key, VersionId=self._version,
                Range=f"bytes={self._position}-{last}",
            )["Body"]
            data = body.read()
            body.close()
        except (ClientError, BotoCoreError) as exc:
            raise OSError(str(self._store._failure(exc, f"read {self._key}"))) from None
        view[: len(data)] = data
        self._position += len(data)
        return len(data)
