"""Review 13: S3ObjectStore.put_file takes a receive path's vouch (ReceivedContent) for whatever sha256 it
is asked to store: with the vouch holding, the object's name is taken as the content's hash without
comparing it with the hash the vouch names (received.sha256). FileObjectStore.put_file compares them
(control). Content that hashes to X would become object Y, locked for years."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from edge.central.objects import FileIdentity, FileObjectStore, ObjectMismatch, ReceivedContent
from edge.central.s3_objects import S3ObjectStore

CLAIMED = hashlib.sha256(b"what the manifest names").hexdigest()


class _Bucket:
    def __init__(self) -> None:
        self.puts: list[str] = []

    def head_object(self, **kw: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                          "HeadObject")

    def put_object(self, **kw: Any) -> dict[str, Any]:
        self.puts.append(kw["Key"])
        return {"VersionId": "v1"}


def _file(tmp_path: Path) -> tuple[Path, ReceivedContent]:
    source = tmp_path / "upload.bin"
    data = b"the bytes that really arrived"
    source.write_bytes(data)
    received = ReceivedContent(hashlib.sha256(data).hexdigest(), FileIdentity.of(os.stat(source)))
    return source, received


def test_control_file_store_compares_the_vouched_hash(tmp_path: Path) -> None:
    source, received = _file(tmp_path)
    store = FileObjectStore(tmp_path / "objects")
    with pytest.raises(ObjectMismatch):
        store.put_file(source, CLAIMED, None, received=received)


def test_s3_store_compares_the_vouched_hash(tmp_path: Path) -> None:
    source, received = _file(tmp_path)
    store = S3ObjectStore.__new__(S3ObjectStore)
    bucket = _Bucket()
    store.client, store.bucket, store.prefix, store.part_size = bucket, "evidence", "objects/", 8 << 20
    store.config = None  # type: ignore[assignment]
    with pytest.raises(ObjectMismatch):
        store.put_file(source, CLAIMED, None, received=received)
    assert bucket.puts == []
