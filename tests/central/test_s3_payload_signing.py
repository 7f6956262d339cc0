"""[objects] payload_signing on a real Ceph RGW over plain http (tests/central/ceph.py): "unsigned" stops
botocore hashing every body once more for its SigV4 signature, while every body still carries
Content-MD5, the bucket still refuses a body damaged in transit, and objects are still locked."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.exceptions import ClientError

from edge.central.objects import ObjectStoreError, Retention
from edge.central.s3_objects import S3ObjectStore
from edge.custody.canonical import sha256_hex
from tests.central.ceph import CephGateway
from tests.central.s3 import SECRET_ENV, raw_client, s3_store

PART = 5 << 20
BODY_OPERATIONS = ("PutObject", "UploadPart")


@pytest.fixture
def gateway(ceph_gateway: CephGateway, monkeypatch: pytest.MonkeyPatch) -> CephGateway:
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    return ceph_gateway


class _SigningHashes:
    """Counts the bytes botocore's signer hashes with SHA-256 (the request bodies, when it signs them;
    the canonical requests, a few hundred bytes each, always)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        counter = self

        class Counted:
            def __init__(self, data: bytes = b"") -> None:
                self.inner = hashlib.sha256()
                self.update(data)

            def update(self, data: bytes) -> None:
                counter.bytes += len(data)
                self.inner.update(data)

            def copy(self) -> Counted:
                twin = Counted()
                twin.inner = self.inner.copy()
                return twin

            def __getattr__(self, name: str) -> Any:  # digest, hexdigest, digest_size (HMAC's use)
                return getattr(self.inner, name)

        monkeypatch.setattr(botocore.auth, "sha256", Counted)


def _sent_headers(store: S3ObjectStore) -> list[dict[str, str]]:
    """The headers of every request with a body the store sends from now on, as they go on the wire."""
    seen: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        seen.append({k.lower(): (v.decode() if isinstance(v, bytes) else str(v))
                     for k, v in request.headers.items()})

    for operation in BODY_OPERATIONS:
        store.client.meta.events.register(f"before-send.s3.{operation}", record)
    return seen


def _upload(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _until() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


@pytest.mark.parametrize("size", [20_000, 2 * PART + 7], ids=["single", "multipart"])
def test_unsigned_payload_hashes_no_body_for_the_signature_and_keeps_md5_and_the_lock(
    gateway: CephGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    assert gateway.endpoint.startswith("http://")  # where botocore signs bodies unless told not to
    store = s3_store(gateway, payload_signing="unsigned")
    sent = _sent_headers(store)
    hashes = _SigningHashes(monkeypatch)
    data = os.urandom(size)
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data, "unsigned.part"), sha, Retention(_until()))
    assert sent and all(h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" for h in sent)
    assert all(h.get("content-md5") for h in sent)  # transport integrity stays
    assert hashes.bytes < 64 << 10  # canonical requests only, never the body
    mode, _, _ = store.retention_of(sha)
    assert mode == "COMPLIANCE" and store.verify(sha) is None
    version = raw_client(gateway).head_object(Bucket=store.bucket, Key=store.key_of(sha))["VersionId"]
    with pytest.raises(ClientError):
        raw_client(gateway).delete_object(Bucket=store.bucket, Key=store.key_of(sha), VersionId=version)

    # Control: the default (auto) over plain http signs every body, hashing each byte once more.
    signed = s3_store(gateway)
    signed_sent = _sent_headers(signed)
    before = hashes.bytes
    other = os.urandom(size)
    signed.put_file(_upload(tmp_path, other, "signed.part"), sha256_hex(other), Retention(_until()))
    assert all(len(h["x-amz-content-sha256"]) == 64 for h in signed_sent)
    assert hashes.bytes - before >= size


@pytest.mark.parametrize("size", [20_000, 2 * PART + 7], ids=["single", "multipart"])
def test_without_a_signed_payload_a_body_damaged_in_transit_is_refused_by_content_md5(
    gateway: CephGateway, tmp_path: Path, size: int
) -> None:
    store = s3_store(gateway, payload_signing="unsigned")
    damaged: list[str] = []

    def flip_a_byte(request: Any, operation_name: str = "", **_: Any) -> None:
        if damaged:
            return
        body = request.body  # bytes, or the file-like botocore makes of them for a streaming body
        data = bytes(body) if isinstance(body, (bytes, bytearray)) else body.read()
        request.body = data[:9] + bytes([data[9] ^ 0x01]) + data[10:]  # same length, one bit off
        damaged.append(str(request.url))

    for operation in BODY_OPERATIONS:
        store.client.meta.events.register(f"before-send.s3.{operation}", flip_a_byte)
    data = os.urandom(size)
    sha = sha256_hex(data)
    source = _upload(tmp_path, data, "damaged.part")
    with pytest.raises(ObjectStoreError) as refused:
        store.put_file(source, sha, Retention(_until()))
    assert damaged and "BadDigest" in str(refused.value), refused.value
    assert not store.exists(sha) and source.exists()  # nothing stored, the upload kept for a retry
    # Control: the same store, the same file, nothing damaged on the way: stored.
    for operation in BODY_OPERATIONS:
        store.client.meta.events.unregister(f"before-send.s3.{operation}", flip_a_byte)
    store.put_file(source, sha, Retention(_until()))
    assert store.verify(sha) is None and not source.exists()
