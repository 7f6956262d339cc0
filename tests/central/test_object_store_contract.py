"""The object store contract, held by every backend: the local folder and S3 with Object Lock on a real
Ceph RGW (tests/central/ceph.py). One suite, parametrised by backend."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.central.objects import FileObjectStore, ObjectMismatch, ObjectStore, ObjectStoreError, Retention
from edge.central.s3_objects import S3ObjectStore
from edge.custody.canonical import sha256_hex
from tests.central.ceph import CephGateway
from tests.central.s3 import s3_store

PART = 5 << 20  # the S3 store's part size in these tests (S3's smallest)


@pytest.fixture(params=["files", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "files":
        yield FileObjectStore(tmp_path / "objects")
    else:
        gateway: CephGateway = request.getfixturevalue("ceph_gateway")
        yield s3_store(gateway)


def _names(store: ObjectStore) -> list[str]:
    assert isinstance(store, FileObjectStore | S3ObjectStore)  # both list their objects for verification
    return list(store.names())


def _upload(tmp_path: Path, data: bytes, name: str = "u.part") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _retention(days: int = 1) -> Retention:
    return Retention(datetime.now(UTC) + timedelta(days=days))


@pytest.mark.parametrize("size", [14_000, 2 * PART + 12_345], ids=["single", "multipart"])
def test_store_and_read_back(store: ObjectStore, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sha = sha256_hex(data)
    source = _upload(tmp_path, data)
    stored = store.put_file(source, sha, _retention())
    assert not source.exists()  # moved in: no second copy left behind
    assert (stored.sha256, stored.size_bytes) == (sha, size)
    assert store.exists(sha) and store.size_bytes(sha) == size
    with store.open(sha) as stream:
        assert stream.read() == data
        stream.seek(size - 100)
        assert stream.read() == data[-100:]
        stream.seek(7, io.SEEK_SET)
        assert stream.read(5) == data[7:12]
    assert store.verify(sha) is None
    assert _names(store) == [sha]


def test_content_that_does_not_hash_to_its_name_is_refused(store: ObjectStore, tmp_path: Path) -> None:
    claimed = sha256_hex(b"what the manifest says")
    for data in (b"what arrived", os.urandom(PART + 1)):  # one request, and a multipart upload aborted
        source = _upload(tmp_path, data)
        with pytest.raises(ObjectMismatch) as caught:
            store.put_file(source, claimed, _retention())
        assert caught.value.found_sha256 == sha256_hex(data)
        assert source.read_bytes() == data  # untouched: the station's upload is still there
    assert not store.exists(claimed)
    assert _names(store) == []
    # Control: the same store takes content under its own name.
    store.put_file(_upload(tmp_path, b"what the manifest says"), claimed, _retention())
    assert store.verify(claimed) is None


def test_second_put_of_identical_content_is_idempotent(store: ObjectStore, tmp_path: Path) -> None:
    data = b"same"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data, "a"), sha, _retention())
    duplicate = _upload(tmp_path, data, "b")
    again = store.put_file(duplicate, sha, _retention(2))
    assert again.size_bytes == 4 and not duplicate.exists()
    assert _names(store) == [sha]


def test_a_missing_object_is_named_missing(store: ObjectStore) -> None:
    problem = store.verify("0" * 64)
    assert problem is not None and problem.startswith("missing")
    assert not store.exists("0" * 64)
    with pytest.raises(FileNotFoundError):
        store.open("0" * 64)


@pytest.mark.parametrize("name", ["../../etc/passwd", "A" * 64, "ab", "", "0" * 63 + "/", "0" * 65])
def test_names_other_than_64_lower_hex_are_refused(store: ObjectStore, name: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectStoreError):
        store.exists(name)
    with pytest.raises(ObjectStoreError):
        store.put_file(_upload(tmp_path, b"x"), name, _retention())
