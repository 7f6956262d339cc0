"""TusUploadStore: the commit rule, rollbacks, the streaming SHA-256, restarts, damage and expiry."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.central.objects import FileIdentity
from edge.central.tus_store import (
    PREFIX_SHA256,
    ChecksumMismatchError,
    ChunkChecksum,
    InvalidUploadIdError,
    OffsetMismatchError,
    QuotaExceededError,
    TusUploadStore,
    UploadBusyError,
    UploadExpiredError,
    UploadIncompleteError,
    UploadInfo,
    UploadNotFoundError,
    UploadTooLargeError,
    UploadWriteFailedError,
)

START_S = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = START_S

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(root: Path, clock: FakeClock, **kwargs: Any) -> TusUploadStore:
    options: dict[str, Any] = {"max_size_bytes": 1 << 20, "expire_after_s": 3600.0, "clock": clock}
    options.update(kwargs)
    return TusUploadStore(root, **options)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> TusUploadStore:
    return make_store(tmp_path / "uploads", clock)


def record(store: TusUploadStore, upload_id: str) -> dict[str, Any]:
    doc = json.loads((store.root / f"{upload_id}.info.json").read_bytes())
    assert isinstance(doc, dict)
    return doc


def part(store: TusUploadStore, upload_id: str) -> Path:
    return store.root / f"{upload_id}.part"


def sha1(data: bytes) -> ChunkChecksum:
    return ChunkChecksum("sha1", hashlib.sha1(data).digest())


def test_create_makes_a_durable_private_record(store: TusUploadStore, clock: FakeClock) -> None:
    info = store.create("station-a", 100, {"item": "i-1", "filename": "执法.mp4"})
    assert len(info.upload_id) == 32 and int(info.upload_id, 16) >= 0
    assert info.upload_id != store.create("station-a", 100).upload_id
    doc = record(store, info.upload_id)
    assert doc["station"] == "station-a" and doc["length"] == 100 and doc["offset"] == 0
    assert doc["metadata"] == {"item": "i-1", "filename": "执法.mp4"}
    assert doc["created"] == "2027-01-15T08:00:00Z"
    assert doc["expires"] == "2027-01-15T09:00:00Z"
    assert doc["sha256"] is None
    assert UploadInfo.from_dict(doc) == info
    for path in (part(store, info.upload_id), store.root / f"{info.upload_id}.info.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    assert info.expires == datetime(2027, 1, 15, 9, tzinfo=UTC)


def test_create_refuses_what_cannot_be_stored(store: TusUploadStore) -> None:
    with pytest.raises(UploadTooLargeError, match="exceeds the maximum upload size"):
        store.create("s", (1 << 20) + 1)
    with pytest.raises(ValueError):
        store.create("s", -1)
    with pytest.raises(ValueError):
        store.create("", 1)
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize(
    "bad", ["../" + "a" * 29, "A" * 32, "a" * 31, "a" * 33, "", "a" * 31 + "\x00", "/etc/passwd"]
)
def test_only_server_made_ids_reach_the_file_system(store: TusUploadStore, bad: str) -> None:
    for call in (store.get, store.remove, store.complete_path):
        with pytest.raises(InvalidUploadIdError):
            call(bad)
    with pytest.raises(InvalidUploadIdError):
        store.begin_write(bad, offset=0)


def test_streamed_upload_has_its_sha256_without_a_second_read(
    store: TusUploadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(5000)
    info = store.create("s", len(data))

    def no_reread(*_args: object) -> str:
        raise AssertionError("the content was read again")

    monkeypatch.setattr(store, "_hash_file", no_reread)
    for start in (0, 1000, 4000):
        write = store.begin_write(info.upload_id, offset=start)
        try:
            end = min(start + 3000, len(data)) if start != 0 else 1000
            write.write(data[start:end])
            info = write.finish()
        finally:
            write.close()
    assert info.complete
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.complete_path(info.upload_id).read_bytes() == data
    assert record(store, info.upload_id)["sha256"] == info.sha256


def test_checksum_mismatch_truncates_and_restores_the_hash(store: TusUploadStore) -> None:
    data = os.urandom(2000)
    info = store.create("s", len(data))
    with store.begin_write(info.upload_id, offset=0, checksum=sha1(data[:1000])) as write:
        write.write(data[:1000])
        write.finish()
    with store.begin_write(info.upload_id, offset=1000, checksum=sha1(data[1000:])) as write:
        write.write(data[1000:1500])
        write.write(b"\x00" * 500)
        with pytest.raises(ChecksumMismatchError, match="sha1 of the 1000-byte chunk at offset 1000"):
            write.finish()
    assert part(store, info.upload_id).stat().st_size == 1000
    assert store.get(info.upload_id).offset == 1000  # type: ignore[union-attr]
    with store.begin_write(info.upload_id, offset=1000, checksum=sha1(data[1000:])) as write:
        write.write(data[1000:])
        done = write.finish()
    assert done.sha256 == hashlib.sha256(data).hexdigest()


def prefix(data: bytes) -> ChunkChecksum:
    """sha256-prefix: the digest of the whole content from byte 0 through the end of the chunk."""
    return ChunkChecksum(PREFIX_SHA256, hashlib.sha256(data).digest())


def test_prefix_checksums_are_answered_by_the_one_hasher_and_refuse_a_corrupted_chunk(
    store: TusUploadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3000)
    corrupted = bytearray(data[1000:2000])
    corrupted[500] ^= 0x10
    through = {end: prefix(data[:end]) for end in (1000, 2000, 3000)}  # before hashlib is watched
    hashed: list[int] = []
    real_sha256 = hashlib.sha256

    class Counting:
        """Counts the bytes every SHA-256 hasher the store makes is fed (one pass: each byte once)."""

        def __init__(self, inner: Any = None) -> None:
            self.inner = inner if inner is not None else real_sha256()

        def update(self, block: bytes) -> None:
            hashed.append(len(block))
            self.inner.update(block)

        def digest(self) -> bytes:
            return bytes(self.inner.digest())

        def hexdigest(self) -> str:
            return str(self.inner.hexdigest())

        def copy(self) -> Counting:
            return Counting(self.inner.copy())

    monkeypatch.setattr(hashlib, "sha256", Counting)  # the module the store hashes with
    info = store.create("s", len(data))
    with store.begin_write(info.upload_id, offset=0, checksum=through[1000]) as write:
        write.write(data[:1000])
        assert write.finish().offset == 1000
    # A flipped bit in the second chunk: refused, discarded, the offset and the hasher stay.
    with store.begin_write(info.upload_id, offset=1000, checksum=through[2000]) as write:
        write.write(bytes(corrupted))
        with pytest.raises(ChecksumMismatchError, match="sha256-prefix of the 1000-byte chunk at offset"):
            write.finish()
    assert part(store, info.upload_id).stat().st_size == 1000
    # Control: the same chunk intact is taken, and so is the last one, whose digest is the whole content's.
    for start, end in ((1000, 2000), (2000, 3000)):
        with store.begin_write(info.upload_id, offset=start, checksum=through[end]) as write:
            write.write(data[start:end])
            info = write.finish()
    monkeypatch.undo()
    assert info.complete and info.sha256 == hashlib.sha256(data).hexdigest()
    assert sum(hashed) == len(data) + len(corrupted), "every byte hashed once (the refused chunk too)"


def test_a_wrong_whole_content_digest_on_the_last_chunk_is_refused(store: TusUploadStore) -> None:
    data = os.urandom(2000)
    info = store.create("s", len(data))
    with store.begin_write(info.upload_id, offset=0, checksum=prefix(data[:1000])) as write:
        write.write(data[:1000])
        write.finish()
    # The chunk's own bytes are right, but the digest claims other content before them.
    other_before = prefix(b"\x00" * 1000 + data[1000:])
    with store.begin_write(info.upload_id, offset=1000, checksum=other_before) as write:
        write.write(data[1000:])
        with pytest.raises(ChecksumMismatchError):
            write.finish()
    assert not store.get(info.upload_id).complete  # type: ignore[union-attr]
    with store.begin_write(info.upload_id, offset=1000, checksum=prefix(data)) as write:
        write.write(data[1000:])
        assert write.finish().sha256 == hashlib.sha256(data).hexdigest()


def test_after_a_restart_a_prefix_checksum_rebuilds_the_hasher_from_the_committed_bytes(
    tmp_path: Path, clock: FakeClock
) -> None:
    data = os.urandom(2000)
    first = make_store(tmp_path / "uploads", clock)
    info = first.create("s", len(data))
    with first.begin_write(info.upload_id, offset=0, checksum=prefix(data[:1000])) as write:
        write.write(data[:1000])
        write.finish()
    again = make_store(tmp_path / "uploads", clock)  # the in-memory hasher is gone
    corrupted = b"\xff" + data[1001:]
    with again.begin_write(info.upload_id, offset=1000, checksum=prefix(data)) as write:
        write.write(corrupted)
        with pytest.raises(ChecksumMismatchError):
            write.finish()
    with again.begin_write(info.upload_id, offset=1000, checksum=prefix(data)) as write:
        write.write(data[1000:])
        assert write.finish().sha256 == hashlib.sha256(data).hexdigest()


def test_a_complete_upload_vouches_for_its_hash_with_the_file_identity(store: TusUploadStore) -> None:
    data = os.urandom(2000)
    info = store.create("s", len(data))
    with store.begin_write(info.upload_id, offset=0) as write:
        write.write(data[:1000])
        write.finish()
    assert store.received(info.upload_id) is None, "nothing to vouch for before it is complete"
    with store.begin_write(info.upload_id, offset=1000) as write:
        write.write(data[1000:])
        write.finish()
    received = store.received(info.upload_id)
    assert received is not None and received.sha256 == hashlib.sha256(data).hexdigest()
    assert received.identity == FileIdentity.of(store.complete_path(info.upload_id).stat())


def test_an_early_end_keeps_plain_bytes_and_drops_checksummed_ones(store: TusUploadStore) -> None:
    info = store.create("s", 100)
    with store.begin_write(info.upload_id, offset=0) as write:
        write.write(b"a" * 30)
        kept = write.keep()
    assert kept.offset == 30 and part(store, info.upload_id).stat().st_size == 30
    with store.begin_write(info.upload_id, offset=30, checksum=sha1(b"b" * 70)) as write:
        write.write(b"b" * 40)
        dropped = write.keep()
    assert dropped.offset == 30 and part(store, info.upload_id).stat().st_size == 30
    with store.begin_write(info.upload_id, offset=30) as write:
        write.write(b"c" * 20)
    # close() without finish: nothing uncommitted survives.
    assert store.get(info.upload_id).offset == 30  # type: ignore[union-attr]
    assert part(store, info.upload_id).stat().st_size == 30


def test_long_plain_bodies_commit_as_they_stream(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock, commit_every_bytes=100)
    info = store.create("s", 1000)
    with store.begin_write(info.upload_id, offset=0) as write:
        committed = []
        for _ in range(5):
            write.write(b"x" * 60)
            committed.append(record(store, info.upload_id)["offset"])
        assert committed == [0, 120, 120, 240, 240]
        assert store.get(info.upload_id).offset == 240  # type: ignore[union-attr]
        assert write.offset == 300
        write.keep()
    # Checksummed bodies never commit before they verify.
    with store.begin_write(info.upload_id, offset=300, checksum=sha1(b"y" * 500)) as write:
        for _ in range(5):
            write.write(b"y" * 100)
        assert record(store, info.upload_id)["offset"] == 300
        write.finish()
    assert record(store, info.upload_id)["offset"] == 800


def test_writes_past_the_length_write_nothing_and_end_the_write(store: TusUploadStore) -> None:
    info = store.create("s", 10)
    with store.begin_write(info.upload_id, offset=0) as write:
        write.write(b"12345678")
        with pytest.raises(UploadTooLargeError, match="would exceed its length 10"):
            write.write(b"abc")
        assert write.offset == 8
        # Like any failed call, it ends what this write may store (the HTTP layer answers 413 and discards).
        refused = rf"upload {info.upload_id}: write refused: an earlier call of this write failed \(Upload"
        with pytest.raises(UploadWriteFailedError, match=refused + r"TooLargeError: .*exceed its length 10"):
            write.write(b"90")
        with pytest.raises(UploadWriteFailedError, match=r"finish refused.*stays at offset 0"):
            write.finish()
    assert store.get(info.upload_id).offset == 0  # type: ignore[union-attr]
    assert part(store, info.upload_id).stat().st_size == 0
    # Control: the next request, and the same write without the bytes too many, completes the upload.
    with store.begin_write(info.upload_id, offset=0) as write:
        write.write(b"12345678")
        write.write(b"90")
        assert write.finish().sha256 == hashlib.sha256(b"1234567890").hexdigest()


def test_one_writer_at_a_time_and_only_at_the_offset(store: TusUploadStore) -> None:
    info = store.create("s", 10)
    with pytest.raises(OffsetMismatchError) as caught:
        store.begin_write(info.upload_id, offset=3)
    assert (caught.value.expected, caught.value.got) == (0, 3)
    write = store.begin_write(info.upload_id, offset=0)
    with pytest.raises(UploadBusyError):
        store.begin_write(info.upload_id, offset=0)
    with pytest.raises(UploadBusyError):
        store.remove(info.upload_id)
    write.close()
    write.close()
    store.begin_write(info.upload_id, offset=0).close()
    with pytest.raises(UploadNotFoundError):
        store.begin_write("0" * 32, offset=0)


def test_restart_truncates_bytes_that_never_committed(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock)
    info = first.create("s", 100)
    with first.begin_write(info.upload_id, offset=0) as write:
        write.write(b"a" * 40)
        write.finish()
    # A crash in the middle of the next request: bytes on disk, no commit.
    with part(first, info.upload_id).open("ab") as handle:
        handle.write(b"b" * 25)
    second = make_store(tmp_path, clock)
    assert second.get(info.upload_id).offset == 40  # type: ignore[union-attr]
    assert part(second, info.upload_id).stat().st_size == 40
    with second.begin_write(info.upload_id, offset=40) as write:
        write.write(b"c" * 60)
        done = write.finish()
    # The hasher was lost with the first process: the completion re-read the file.
    assert done.sha256 == hashlib.sha256(b"a" * 40 + b"c" * 60).hexdigest()
    third = make_store(tmp_path, clock)
    assert third.get(info.upload_id) == done


def test_restart_with_lost_committed_bytes_resumes_where_the_disk_is(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = make_store(tmp_path, clock)
    info = first.create("s", 100)
    with first.begin_write(info.upload_id, offset=0) as write:
        write.write(b"a" * 100)
        write.finish()
    os.truncate(part(first, info.upload_id), 70)  # damage: the file lost its tail
    second = make_store(tmp_path, clock)
    again = second.get(info.upload_id)
    assert again is not None and again.offset == 70 and again.sha256 is None and not again.complete
    assert record(second, info.upload_id)["offset"] == 70
    with pytest.raises(UploadIncompleteError):
        second.complete_path(info.upload_id)


def test_a_complete_record_without_content_is_gone(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock)
    info = first.create("s", 3)
    with first.begin_write(info.upload_id, offset=0) as write:
        write.write(b"abc")
        write.finish()
    part(first, info.upload_id).rename(tmp_path / "moved-to-objects")
    assert make_store(tmp_path, clock).get(info.upload_id) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved-to-objects"]


def test_an_incomplete_record_without_content_restarts_at_zero(tmp_path: Path, clock: FakeClock) -> None:
    first = make_store(tmp_path, clock)
    info = first.create("s", 3)
    part(first, info.upload_id).unlink()
    again = make_store(tmp_path, clock).get(info.upload_id)
    assert again is not None and again.offset == 0
    assert part(first, info.upload_id).stat().st_size == 0


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b'{"format": "x"}',
        b"x" * (65 * 1024),
    ],
)
def test_unreadable_records_are_ignored_then_purged(tmp_path: Path, clock: FakeClock, damage: bytes) -> None:
    store = make_store(tmp_path, clock)
    info = store.create("s", 10)
    (tmp_path / f"{info.upload_id}.info.json").write_bytes(damage)
    os.utime(tmp_path / f"{info.upload_id}.info.json", (START_S, START_S))
    fresh = make_store(tmp_path, clock)
    assert fresh.get(info.upload_id) is None
    assert fresh.purge_expired() == 0  # too recent to be sure it is abandoned
    assert fresh.purge_expired(datetime.fromtimestamp(START_S + 3601, UTC)) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": "other/1"}, "format"),
        ({"extra": 1}, "expected fields"),
        ({"length": True}, "length"),
        ({"offset": -1}, "offset"),
        ({"offset": 11}, "beyond length"),
        ({"offset": 10}, "a complete upload needs"),
        ({"sha256": "00" * 32}, "incomplete"),
        ({"upload_id": "../x"}, "upload_id"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"created": "yesterday"}, "created"),
        ({"station": ""}, "station"),
    ],
)
def test_records_are_parsed_strictly(store: TusUploadStore, change: dict[str, Any], problem: str) -> None:
    info = store.create("s", 10)
    doc = {**info.to_dict(), **change}
    with pytest.raises(ValueError, match=problem):
        UploadInfo.from_dict(doc)


def test_purge_removes_only_expired_idle_uploads(tmp_path: Path, clock: FakeClock) -> None:
    # Complete uploads wait longer (for their registration) than incomplete ones (for their next bytes).
    store = make_store(tmp_path / "uploads", clock, expire_complete_after_s=7200.0)
    stale = store.create("s", 10)
    busy = store.create("s", 10)
    done = store.create("s", 1)
    with store.begin_write(done.upload_id, offset=0) as write:
        write.write(b"x")
        write.finish()
    clock.now_s += 1800
    fresh = store.create("s", 10)
    clock.now_s += 1801
    assert store.is_expired(store.get(stale.upload_id))  # type: ignore[arg-type]
    with pytest.raises(UploadExpiredError):
        store.begin_write(stale.upload_id, offset=0)
    # A request that started before the expiry keeps its upload until it ends.
    clock.now_s -= 1801
    write = store.begin_write(busy.upload_id, offset=0)
    clock.now_s += 1801
    (store.root / ("f" * 32 + ".part")).write_bytes(b"orphan")
    (store.root / ".leftover.info.json.1.ab.tmp").write_bytes(b"{}")
    old = START_S - 10
    for name in ("f" * 32 + ".part", ".leftover.info.json.1.ab.tmp"):
        os.utime(store.root / name, (old, old))
    (store.root / "unrelated.txt").write_bytes(b"not ours")
    assert store.purge_expired() == 1
    write.close()
    assert store.get(stale.upload_id) is None
    assert store.get(busy.upload_id) is not None
    assert store.get(done.upload_id) is not None
    assert store.get(fresh.upload_id) is not None
    names = {p.name for p in store.root.iterdir()}
    assert "f" * 32 + ".part" not in names and ".leftover.info.json.1.ab.tmp" not in names
    assert "unrelated.txt" in names
    assert store.purge_expired() == 1  # the busy one, now idle


def test_complete_uploads_never_registered_expire_after_their_own_time(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.central.tus_store")
    store = make_store(tmp_path / "uploads", clock, expire_complete_after_s=7200.0)
    done = store.create("s", 1)
    clock.now_s += 3000  # completion restarts the clock: 7200 s from here
    with store.begin_write(done.upload_id, offset=0) as write:
        write.write(b"x")
        write.finish()
    empty = store.create("s", 0)  # complete at creation
    held = store.create("s", 2)
    with store.begin_write(held.upload_id, offset=0) as write:
        write.write(b"yz")
        write.finish()
    clock.now_s += 7199
    assert store.purge_expired() == 0
    assert not store.is_expired(store.get(done.upload_id))  # type: ignore[arg-type]
    # A registration asks for the content just before the expiry: it keeps it while it works.
    store.complete_path(held.upload_id)
    clock.now_s += 2
    assert store.purge_expired() == 2
    assert store.get(done.upload_id) is None and store.get(empty.upload_id) is None
    assert not part(store, done.upload_id).exists()
    assert store.get(held.upload_id) is not None
    messages = [r.getMessage() for r in caplog.records]
    assert any(done.upload_id in m and "never registered" in m for m in messages)
    # The lease ends; nothing registered the upload: purged.
    clock.now_s += 3600
    assert store.purge_expired() == 1
    assert store.get(held.upload_id) is None


def test_station_quota_counts_every_upload_not_yet_removed(tmp_path: Path, clock: FakeClock) -> None:
    root = tmp_path / "uploads"
    store = make_store(root, clock, station_quota_bytes=100)
    first = store.create("a", 60)
    done = store.create("a", 30)
    with store.begin_write(done.upload_id, offset=0) as write:
        write.write(b"d" * 30)
        write.finish()
    assert store.outstanding_bytes("a") == 90 and store.outstanding_bytes("b") == 0
    with pytest.raises(QuotaExceededError) as caught:
        store.create("a", 11)
    assert (caught.value.outstanding, caught.value.length, caught.value.quota) == (90, 11, 100)
    assert "station a" in str(caught.value)
    assert len(list(root.glob("*.info.json"))) == 2  # nothing was created
    store.create("a", 10)  # exactly the quota
    store.create("b", 100)  # another station's quota is its own
    # A restart counts the records on disk.
    again = make_store(root, clock, station_quota_bytes=100)
    with pytest.raises(QuotaExceededError):
        again.create("a", 1)
    # Removing an upload frees its share; an expired incomplete one no longer counts.
    again.remove(done.upload_id)
    assert again.outstanding_bytes("a") == 70
    clock.now_s += 3601
    assert again.outstanding_bytes("a") == 0
    again.create("a", 100)
    assert again.get(first.upload_id) is not None  # counted out, not yet purged


def test_concurrent_creations_cannot_overshoot_the_quota(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path / "uploads", clock, station_quota_bytes=1000)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def create() -> None:
        start.wait()
        try:
            store.create("a", 300)
            outcomes.append("created")
        except QuotaExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert store.outstanding_bytes("a") == 900
