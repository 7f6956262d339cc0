"""The bytes of unfinished tus uploads in a bucket, one object per committed part.

Key ``uploads/<upload id>/<part, 5 digits>``, in the staging bucket (``[central] objects``
``staging_bucket``: versioned, without Object Lock, checked at start by :meth:`S3ObjectStore.check_bucket`)
or, without one, in the content bucket beside the content objects (``<prefix><sha256>``, a prefix that
must not contain ``uploads/``). Why objects and not the parts of an S3 multipart upload: no S3 call reads
back the parts of an unfinished multipart upload, and a receiver that picks up an upload another
started must read the committed bytes once to rebuild the running SHA-256 (the station's
``sha256-prefix`` checksum and the object's name need it). Once the upload is registered the parts
become the content object by server-side copies (:meth:`S3ObjectStore.put_copies`: UploadPartCopy into a
multipart upload at the content-addressed key, with the Object Lock headers), and are deleted.

Every part goes up with ``Content-MD5`` (transport integrity; the SHA-256 is ours). The bucket is
versioned: each part is addressed by the version the PUT returned, so a part re-sent after a rolled-back
chunk or a receiver's crash never changes what a committed record points to; deleting an upload deletes
every version under its key prefix. In the content bucket with a default retention the part versions are
locked like everything else for that period: their deletion is refused and logged, and a lifecycle rule
on ``uploads/`` (README) removes them once the lock ends; a staging bucket (no Object Lock) avoids that,
the parts going into the locked content object by cross-bucket UploadPartCopy.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from edge.central.objects import ObjectStoreError
from edge.central.s3_objects import CopySource, S3ObjectStore

__all__ = ["STAGING_PREFIX", "Hasher", "TusStaging"]

log = logging.getLogger(__name__)

STAGING_PREFIX = "uploads/"
_READ_CHUNK_BYTES = 1 << 20
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class TusStaging:
    """Part objects of the uploads in the staging bucket, or ``objects``' bucket without one (see the
    module docstring)."""

    def __init__(self, objects: S3ObjectStore) -> None:
        if STAGING_PREFIX.startswith(objects.prefix) or objects.prefix.startswith(STAGING_PREFIX):
            # Either way round the two overlap. A prefix containing uploads/: the store's audit would take
            # every part for a planted object (and names() walks them). A prefix under uploads/: the
            # README's lifecycle rule on uploads/ would expire (delete-mark) every locked content object.
            raise ObjectStoreError(
                f"[central] objects.prefix {objects.prefix!r} overlaps the tus staging prefix "
                f"{STAGING_PREFIX!r}: set objects.prefix to a folder of its own, neither containing nor "
                "inside uploads/ (the default is objects/)")
        self.objects = objects
        self.client: Any = objects.client
        self.bucket = objects.config.staging_bucket or objects.bucket

    def __repr__(self) -> str:
        return f"TusStaging(bucket={self.bucket!r}, prefix={STAGING_PREFIX!r})"

    @property
    def own_bucket(self) -> bool:
        """Whether the parts have a bucket of their own (``staging_bucket``), not the content bucket."""
        return self.bucket != self.objects.bucket

    def _failure(self, exc: Exception, what: str) -> ObjectStoreError:
        return self.objects.failure(exc, what, self.bucket)

    def reachable(self) -> str | None:
        """None when the parts' bucket answers, else a sentence (readiness: a receiver whose staging
        bucket is gone cannot take an upload's bytes)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            return str(self._failure(exc, "head staging bucket"))
        return None

    @staticmethod
    def key(upload_id: str, part: int) -> str:
        return f"{STAGING_PREFIX}{upload_id}/{part:05d}"

    def copy_source(self, upload_id: str, part: int, version_id: str, size: int) -> CopySource:
        """Where the server-side copy into the content object reads a committed part."""
        return CopySource(self.key(upload_id, part), version_id, size, self.bucket)

    def put_part(self, upload_id: str, part: int, data: bytes | bytearray) -> str:
        """Store one part; returns its version id. Raises :class:`ObjectStoreError` (unavailable or
        refused). ``data`` is sent as it is, a bytearray without a copy: it must not change until this
        returns (botocore's retries send the same object again)."""
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.key(upload_id, part), Body=data,
                                            ContentMD5=md5)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"store part {part} of upload {upload_id}") from None
        version = str(answer.get("VersionId") or "")
        if not version:
            raise ObjectStoreError(f"bucket {self.bucket} returned no version id for part {part} of upload "
                                   f"{upload_id}: is versioning (Object Lock) enabled?")
        return version

    def read_into(self, sources: Iterable[CopySource], hasher: Hasher) -> int:
        """Feed the parts' bytes, in order, to ``hasher``; returns the bytes read. Raises
        ``FileNotFoundError`` for a missing part and :class:`ObjectStoreError` for one of another size."""
        total = 0
        for source in sources:
            got = 0
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=source.key,
                                              VersionId=source.version_id)["Body"]
                try:
                    for chunk in body.iter_chunks(_READ_CHUNK_BYTES):
                        hasher.update(chunk)
                        got += len(chunk)
                finally:
                    body.close()
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    raise FileNotFoundError(f"{source.key} version {source.version_id} is not in bucket "
                                            f"{self.bucket}") from None
                raise self._failure(exc, f"read {source.key}") from None
            except BotoCoreError as exc:
                raise self._failure(exc, f"read {source.key}") from None
            if got != source.size:
                raise ObjectStoreError(f"{source.key} version {source.version_id} holds {got} bytes, its "
                                       f"record says {source.size}")
            total += got
        return total

    def delete_version(self, key: str, version_id: str) -> bool:
        """Delete one part version for good; False (logged) when the bucket refuses (a default retention
        locks it) or cannot be reached: the lifecycle rule removes it later."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("staged part %s version %s could not be deleted (a lifecycle rule on %s removes it "
                        "later): %s", key, version_id, STAGING_PREFIX, self._failure(exc, "delete"))
            return False
        return True

    def delete_upload(self, upload_id: str) -> bool:
        """Delete every version (and delete marker) under the upload's prefix, including parts of chunks
        that were never committed; True when nothing is left."""
        prefix = f"{STAGING_PREFIX}{upload_id}/"
        found: list[tuple[str, str]] = []
        try:
            paginator = self.client.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    found.append((str(entry["Key"]), str(entry["VersionId"])))
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, f"list the parts of upload {upload_id}") from None
        return all([self.delete_version(key, version) for key, version in found])
