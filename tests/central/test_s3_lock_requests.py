"""The lock of a newly written object on a real Ceph RGW (tests/central/ceph.py) is read once when the
write already set it, and written and read back when it did not: a lock is never taken on trust, and
never confirmed twice."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.central.objects import Retention
from edge.central.s3_objects import S3ObjectStore
from edge.custody.canonical import sha256_hex
from tests.central.ceph import CephGateway
from tests.central.s3 import SECRET_ENV, s3_store

PART = 5 << 20


@pytest.fixture
def store(ceph_gateway: CephGateway, monkeypatch: pytest.MonkeyPatch) -> S3ObjectStore:
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    return s3_store(ceph_gateway)


def _requests(store: S3ObjectStore) -> Counter[str]:
    """Every S3 operation the store sends from now on, by name, as it goes on the wire."""
    sent: Counter[str] = Counter()

    def count(event_name: str = "", **_: Any) -> None:
        sent[event_name.rsplit(".", 1)[-1]] += 1

    store.client.meta.events.register("before-send.s3", count)
    return sent


@pytest.mark.parametrize("legal_hold", [False, True], ids=["class", "permanent"])
def test_a_lock_set_by_the_write_is_read_once_and_not_written_again(
    store: S3ObjectStore, tmp_path: Path, legal_hold: bool
) -> None:
    data = os.urandom(20_000)  # one PUT, with the lock headers: RGW applies them
    sha = sha256_hex(data)
    source = tmp_path / "single.part"
    source.write_bytes(data)
    sent = _requests(store)
    retention = Retention(datetime.now(UTC) + timedelta(days=3), legal_hold=legal_hold)
    store.put_file(source, sha, retention)
    assert sent["PutObject"] == 1
    assert sent["GetObjectRetention"] == 1 and sent["GetObjectLegalHold"] == 1
    assert sent["PutObjectRetention"] == 0 and sent["PutObjectLegalHold"] == 0
    mode, until, held = store.retention_of(sha)
    assert mode == "COMPLIANCE" and until is not None and until >= retention.until and held is legal_hold


def test_a_lock_the_write_did_not_set_is_written_and_read_back(store: S3ObjectStore, tmp_path: Path) -> None:
    """The control: RGW 16.2 ignores the lock headers of a multipart upload, so the first read finds no
    lock; the central sets it and reads it back before the object counts as stored."""
    data = os.urandom(PART + 7)
    sha = sha256_hex(data)
    source = tmp_path / "multipart.part"
    source.write_bytes(data)
    sent = _requests(store)
    retention = Retention(datetime.now(UTC) + timedelta(days=3))
    store.put_file(source, sha, retention)
    assert sent["UploadPart"] == 2 and sent["PutObjectRetention"] == 1
    assert sent["GetObjectRetention"] == 2  # before the write of the lock, and its read-back
    mode, until, _ = store.retention_of(sha)
    assert mode == "COMPLIANCE" and until is not None and until >= retention.until
