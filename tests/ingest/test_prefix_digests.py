"""The verification re-read records the stored copy's SHA-256 prefix digests for the upload
(edge.ingest.prefix_digests): at every multiple of the step and at the end, each the SHA-256 of exactly
the stored bytes from 0 to there, on the same pass; the pipeline keeps them with the sealed item, and a
row that does not end at the item's sealed hash is not used."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

import pytest

from edge.ingest.copy import reread_and_compare
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.prefix_digests import DIGEST_BYTES, MAX_DIGESTS, PrefixDigests, PrefixRecorder
from edge.ingest.repository import IngestRepository, load_prefix_digests, record_prefix_digests
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.spool import Spool

STATION = "TEST-STATION"
CHUNK = 4096
STEP = 10_000  # not a multiple of the read chunk: the hash is split inside chunks


def expected_digests(content: bytes, step: int) -> list[bytes]:
    """hashlib over bytes 0..end for every multiple of `step` inside the content, and the end."""
    ends = [*range(step, len(content), step), len(content)]
    return [hashlib.sha256(content[:end]).digest() for end in ends]


def split(digests: PrefixDigests) -> list[bytes]:
    return [digests.digests[i : i + DIGEST_BYTES] for i in range(0, len(digests.digests), DIGEST_BYTES)]


@pytest.mark.parametrize(
    "size", [0, 1, STEP - 1, STEP, 2 * STEP, 3 * STEP + 100], ids=["empty", "1", "under-a-step", "one-step",
                                                                   "two-steps", "short-last-step"]
)
def test_the_reread_records_the_digest_of_the_stored_bytes_at_each_step(tmp_path: Path, size: int) -> None:
    content = random.Random(size).randbytes(size)
    stored = tmp_path / "stored.part"
    stored.write_bytes(content + b"evidence box, not part of the original")
    reread = reread_and_compare(stored, None, size=size, chunk_bytes=CHUNK, what="item",
                                prefix_step_bytes=STEP)
    assert reread.stored_sha256 == hashlib.sha256(content).hexdigest()
    digests = reread.prefix_digests
    assert digests is not None and (digests.step_bytes, digests.size) == (STEP, size)
    assert split(digests) == expected_digests(content, STEP)
    assert digests.whole.hex() == reread.stored_sha256
    for n, end in enumerate([*range(STEP, size, STEP), size]):
        assert digests.at(end) == hashlib.sha256(content[:end]).digest(), n
    if size != STEP // 2:
        assert digests.at(STEP // 2) is None  # not a boundary
    # Control: without a step the re-read records none, and hashes the same.
    plain = reread_and_compare(stored, None, size=size, chunk_bytes=CHUNK, what="item")
    assert plain.prefix_digests is None and plain.stored_sha256 == reread.stored_sha256


def test_the_recorder_gives_the_same_digests_however_the_bytes_are_split() -> None:
    content = os.urandom(5 * STEP + 7)
    whole, pieces = PrefixRecorder(STEP), PrefixRecorder(STEP)
    whole.update(content)
    at = 0
    for size in [1, STEP - 1, STEP, 3, 2 * STEP + 1, len(content)]:
        pieces.update(content[at : at + size])
        at += size
    digests = whole.finish()
    assert digests is not None and digests == pieces.finish()
    assert split(digests) == expected_digests(content, STEP)


async def test_the_pipeline_keeps_the_digests_of_each_sealed_copy(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    sizes = {"a.bin": 0, "b.bin": STEP - 1, "c.bin": 4 * STEP + 321}
    for name, size in sizes.items():
        (drop / name).write_bytes(random.Random(name).randbytes(size))
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK,
                                                        prefix_step_bytes=STEP))
        run = await pipeline.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == len(sizes)
        repository = IngestRepository(store)
        for item in run.sealed:
            record = repository.item(item)
            assert record is not None and record.path is not None
            content = (store.layout.root / record.path).read_bytes()[: record.size]
            digests = load_prefix_digests(store.conn, item, record.sha256, record.size)
            assert digests is not None and digests.step_bytes == STEP
            assert split(digests) == expected_digests(content, STEP)
    finally:
        store.close()


async def test_without_the_reread_no_digests_are_kept(tmp_path: Path) -> None:
    """A path that does not re-read the stored copy records nothing: its upload hashes as before."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.bin").write_bytes(os.urandom(3 * STEP))
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        settings = IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK, prefix_step_bytes=STEP,
                                  verify_reread=False)
        run = await IngestPipeline(store, settings).ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
        assert store.conn.execute("SELECT count(*) FROM prefix_digests").fetchone()[0] == 0
    finally:
        store.close()


def test_a_row_that_does_not_end_at_the_sealed_hash_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    content = os.urandom(2 * STEP + 5)
    recorder = PrefixRecorder(STEP)
    recorder.update(content)
    digests = recorder.finish()
    assert digests is not None
    sealed = hashlib.sha256(content).hexdigest()
    store = StationStore(tmp_path / "store", STATION)
    try:
        with store.transaction() as conn:
            record_prefix_digests(conn, "item-1", digests)
        # Control: the row as recorded is used.
        assert load_prefix_digests(store.conn, "item-1", sealed, len(content)) == digests
        caplog.set_level(logging.WARNING, "edge.ingest.repository")
        assert load_prefix_digests(store.conn, "item-1", "0" * 64, len(content)) is None
        assert "not used" in caplog.text and "sealed hash" in caplog.text
        assert load_prefix_digests(store.conn, "item-1", sealed, len(content) + 1) is None
        with store.transaction() as conn:
            conn.execute("UPDATE prefix_digests SET digests=? WHERE item='item-1'", (digests.digests[:-1],))
        assert load_prefix_digests(store.conn, "item-1", sealed, len(content)) is None
        assert load_prefix_digests(store.conn, "item-2", sealed, len(content)) is None  # none recorded
    finally:
        store.close()


async def test_a_receipted_items_digests_are_dropped_and_an_older_stores_leftovers_at_its_opening(
    tmp_path: Path,
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in ("receipted.bin", "left-over.bin", "queued.bin"):
        (drop / name).write_bytes(random.Random(name).randbytes(3 * STEP + 7))
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK,
                                                        prefix_step_bytes=STEP))
        run = await pipeline.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 3
        receipted, left_over, queued = run.sealed
        spool = Spool(store)
        assert set(spool.enqueue_sealed()) == set(run.sealed)

        def kept() -> set[str]:
            return {row[0] for row in store.conn.execute("SELECT item FROM prefix_digests")}

        assert kept() == set(run.sealed)  # control: each sealed item has its digests
        spool.mark_receipted(receipted, {"receipt": "signed"}, {"summary": 1})
        assert kept() == {left_over, queued}
        # A store made before the receipt dropped them: a receipted item's row left behind.
        with store.transaction() as conn:
            conn.execute("UPDATE uploads SET state='receipted' WHERE item=?", (left_over,))
        assert kept() == {left_over, queued}
    finally:
        store.close()
    reopened = StationStore(tmp_path / "store", STATION)
    try:
        assert {row[0] for row in reopened.conn.execute("SELECT item FROM prefix_digests")} == {queued}
    finally:
        reopened.close()


def test_no_more_digests_are_recorded_or_kept_than_the_loader_uses(tmp_path: Path) -> None:
    # Steps of one byte: MAX_DIGESTS of them are a MiB, not a TiB.
    content = random.Random(11).randbytes(MAX_DIGESTS + 1)
    store = StationStore(tmp_path / "store", STATION)
    try:
        for size, kept in ((MAX_DIGESTS, True), (MAX_DIGESTS + 1, False)):  # control first
            recorder = PrefixRecorder(1)
            recorder.update(content[:size])
            digests = recorder.finish()
            assert (digests is not None) is kept, f"{size} digests: recorded {digests is not None}"
            assert recorder.hexdigest() == hashlib.sha256(content[:size]).hexdigest()
            # Written as the recorder would have them (a store's write refuses them the same way).
            shaped = digests or PrefixDigests(1, size, bytes(DIGEST_BYTES * (size - 1)) + bytes.fromhex(
                recorder.hexdigest()))
            with store.transaction() as conn:
                record_prefix_digests(conn, f"item-{size}", shaped)
            loaded = load_prefix_digests(store.conn, f"item-{size}", recorder.hexdigest(), size)
            assert loaded == (shaped if kept else None)
            rows = store.conn.execute("SELECT count(*) FROM prefix_digests WHERE item=?", (f"item-{size}",))
            assert rows.fetchone()[0] == (1 if kept else 0)
    finally:
        store.close()


@pytest.mark.parametrize("step_again", [2 * STEP, None], ids=["recorded-again", "none-recorded"])
async def test_a_repaired_copy_never_keeps_the_damaged_copys_digests(
    tmp_path: Path, step_again: int | None
) -> None:
    """The repair path (IngestPipeline.reacquire) writes a new stored copy: its digests are the ones its own
    re-read recorded (here at another step: `chunk_mb` changed since the offload), or none at all; the
    damaged copy's never stay for it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    content = random.Random("repaired").randbytes(3 * STEP + 7)
    (drop / "a.bin").write_bytes(content)
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        first = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK,
                                                     prefix_step_bytes=STEP))
        run = await first.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
        item = run.sealed[0]
        record = IngestRepository(store).item(item)
        assert record is not None and record.path is not None
        stored = store.layout.root / record.path

        def steps() -> list[int]:
            return [row[0] for row in store.conn.execute("SELECT step_bytes FROM prefix_digests WHERE item=?",
                                                         (item,))]

        assert steps() == [STEP]
        rotten = bytearray(stored.read_bytes())
        rotten[STEP + 1] ^= 0x01
        stored.write_bytes(bytes(rotten))

        # Offered again: proven the same original by its hash, the damaged copy is found and rebuilt.
        again = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK,
                                                     prefix_step_bytes=step_again))
        await again.ingest(source, source.listing().items, prove_by_hash=True)
        assert [e.item for e in store.ledger.entries() if e.type == "reacquired"] == [item]
        assert stored.read_bytes()[: len(content)] == content

        if step_again is None:
            assert steps() == [], "the damaged copy's digests were kept for the repaired copy"
        else:
            assert steps() == [step_again]
            digests = load_prefix_digests(store.conn, item, record.sha256, record.size)
            assert digests is not None and split(digests) == expected_digests(content, step_again)
    finally:
        store.close()
