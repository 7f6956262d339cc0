"""FileObjectStore: content addressing, durability steps, refusal of wrong or damaged content."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from edge.central import objects
from edge.central.objects import (
    FileIdentity,
    FileObjectStore,
    ObjectCorrupt,
    ObjectMismatch,
    ObjectStoreError,
    ReceivedContent,
)
from edge.custody.canonical import sha256_hex


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "objects")


def _upload(tmp_path: Path, data: bytes, name: str = "u.part") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_put_links_into_a_content_addressed_read_only_path(store: FileObjectStore, tmp_path: Path) -> None:
    data = b"evidence bytes" * 1000
    sha = sha256_hex(data)
    source = _upload(tmp_path, data)
    stored = store.put_file(source, sha)
    assert not source.exists()  # moved: the object shares its inode with no other name
    assert stored.sha256 == sha and stored.size_bytes == len(data)
    path = store.root / sha[:2] / sha[2:4] / sha
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o400  # read-only, private to the service user
    assert store.exists(sha) and store.size_bytes(sha) == len(data)
    with store.open(sha) as stream:
        assert stream.read() == data
    assert store.verify(sha) is None
    assert list(store.names()) == [sha]
    assert list(store.unexpected()) == []


def test_put_refuses_content_that_does_not_hash_to_the_name(store: FileObjectStore, tmp_path: Path) -> None:
    claimed = sha256_hex(b"what the manifest says")
    source = _upload(tmp_path, b"what arrived")
    with pytest.raises(ObjectMismatch) as caught:
        store.put_file(source, claimed)
    assert caught.value.found_sha256 == sha256_hex(b"what arrived")
    assert source.read_bytes() == b"what arrived"
    assert not store.exists(claimed)
    assert list(store.names()) == []


def test_a_receive_paths_hash_is_taken_only_while_the_file_is_the_one_it_hashed(
    store: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"evidence bytes" * 1000
    sha = sha256_hex(data)
    reads: list[Path] = []
    real_hash_file = objects._hash_file

    def watched(path: Path) -> tuple[str, int]:
        reads.append(path)
        return real_hash_file(path)

    monkeypatch.setattr(objects, "_hash_file", watched)
    # Unchanged since the receive path hashed it: linked in without reading it again.
    source = _upload(tmp_path, data, "a.part")
    store.put_file(source, sha, received=ReceivedContent(sha, FileIdentity.of(source.stat())))
    assert reads == []
    assert store.verify(sha) is None  # (verify reads it: that is its job)
    reads.clear()
    # Changed afterwards (same size, one byte, modification time put back): the change time moved, so
    # the receive path's word no longer holds; the file is hashed, and refused.
    changed = _upload(tmp_path, data, "b.part")
    vouched = ReceivedContent(sha, FileIdentity.of(changed.stat()))
    with open(changed, "r+b") as stream:
        stream.seek(7)
        stream.write(b"X")
    os.utime(changed, ns=(vouched.identity.mtime_ns, vouched.identity.mtime_ns))
    with pytest.raises(ObjectMismatch) as caught:
        store.put_file(changed, sha, received=vouched)
    assert reads == [changed] and caught.value.found_sha256 == sha256_hex(changed.read_bytes())
    assert changed.exists() and list(store.names()) == [sha]


def test_second_put_of_identical_content_is_idempotent(store: FileObjectStore, tmp_path: Path) -> None:
    data = b"same"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data, "a"), sha)
    duplicate = _upload(tmp_path, data, "b")
    again = store.put_file(duplicate, sha)
    assert again.size_bytes == 4 and not duplicate.exists()
    assert list(store.names()) == [sha]


def test_put_over_a_damaged_object_refuses_instead_of_hiding_the_damage(
    store: FileObjectStore, tmp_path: Path
) -> None:
    data = b"original content"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data, "a"), sha)
    path = store.path_of(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered content")
    assert "altered" in (store.verify(sha) or "")
    offered = _upload(tmp_path, data, "b")
    with pytest.raises(ObjectCorrupt, match=sha):
        store.put_file(offered, sha)
    assert path.read_bytes() == b"tampered content" and offered.exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "A" * 64, "ab", "", "0" * 63 + "/", "0" * 65])
def test_names_other_than_64_lower_hex_are_refused(store: FileObjectStore, name: str) -> None:
    with pytest.raises(ObjectStoreError):
        store.path_of(name)
    with pytest.raises(ObjectStoreError):
        store.exists(name)


def test_cross_device_upload_is_copied_and_hashed(
    store: FileObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link
    calls: list[str] = []

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(src))
        if not os.path.basename(os.fspath(src)).startswith(".incoming-"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    data = b"x" * 3_000_000
    sha = sha256_hex(data)
    source = _upload(tmp_path, data)
    source_inode = source.stat().st_ino
    store.put_file(source, sha)
    assert len(calls) == 2
    assert store.path_of(sha).read_bytes() == data
    assert store.path_of(sha).stat().st_ino != source_inode
    assert not source.exists()
    assert list(store.unexpected()) == []


def test_unexpected_files_are_listed(store: FileObjectStore, tmp_path: Path) -> None:
    data = b"good"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data), sha)
    (store.root / "notes.txt").write_text("planted")
    (store.path_of(sha).parent / ("f" * 64)).write_text("misplaced")
    (store.path_of(sha).parent / ".incoming-deadbeef").write_text("crash leftover")
    (store.root / "zz").mkdir()
    found = sorted(p.name for p in store.unexpected())
    assert found == sorted([".incoming-deadbeef", "f" * 64, "notes.txt", "zz"])
    assert list(store.names()) == [sha]


def test_verify_reports_a_missing_object(store: FileObjectStore) -> None:
    assert store.verify("0" * 64) == "missing"
