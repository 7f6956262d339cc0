"""The ingest pipeline behind other sources than USB recorders: the seam GB/T 28181 and rooms build on.

A local-directory source (files on the station's disk, case known up front) and a stream source
(MPEG-PS bytes from a real ffmpeg pipe, like a GB/T 28181 download: no size up front, no original to
read again) go through the very pipeline the USB offload uses, and their items verify with
`edge verify` like any other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.custody.isobmff import find_evidence_box
from edge.durable.uncached import ReadMethod
from edge.ingest.copy import read_error
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.source import OfferedItem, Origin, OriginalKey
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.verify.station import verify_store
from simulators.recorder.media import make_jpg, make_mp4, make_wav

CASE = {
    "case_number": "A3301062026110012",
    "location": "询问室 2",
    "collector": "王芳(110002)",
    "subject": "询问笔录",
    "important": True,
    "category": "行政案件",
    "retention": "permanent",
}
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local-media")
    make_mp4(root / "segment-0001.mp4", size_bytes=400_000, seed=11)
    make_jpg(root / "scene.jpg", seed=12)
    make_wav(root / "statement.wav", seconds=1.5, seed=13)
    return root


@pytest.fixture
def drop(media_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "drop"
    shutil.copytree(media_dir, target)
    return target


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def local_source(directory: Path) -> LocalDirectory:
    return LocalDirectory(
        directory, label="room-2", station_id="TEST-STATION", case=CASE, collector_no="110002"
    )


def manifests(store: StationStore) -> dict[str, dict[str, Any]]:
    repository = IngestRepository(store)
    found = {}
    for (item,) in store.conn.execute("SELECT item FROM items"):
        record = repository.item(item)
        assert record is not None and record.manifest is not None
        found[record.manifest["original"]["name"]] = record.manifest
    return found


async def test_local_directory_items_are_sealed_verified_and_carry_their_case(
    store: StationStore, drop: Path
) -> None:
    source = local_source(drop)
    listing = source.listing()
    assert listing.refused == []
    run = await IngestPipeline(store, SETTINGS).ingest(source, listing.items)
    assert run.outcome is IngestOutcome.DONE
    assert len(run.sealed) == 3
    by_name = manifests(store)
    assert set(by_name) == {"segment-0001.mp4", "scene.jpg", "statement.wav"}
    for manifest in by_name.values():
        assert manifest["case"] == CASE, "a source that knows the case up front gets it into the manifest"
        assert manifest["source"] == {"kind": "local", "station": "TEST-STATION", "directory": "room-2"}
        assert manifest["time"]["device_clock_offset_ms"] == 0
    mp4 = by_name["segment-0001.mp4"]
    assert mp4["media"]["streams"][0]["codec"] == "h264"
    stored = store.layout.root / store.conn.execute(
        "SELECT path FROM items WHERE sha256=?", (mp4["sha256"],)
    ).fetchone()[0]
    with stored.open("rb") as f:
        assert find_evidence_box(f, stored.stat().st_size) is not None, "MP4s from any source are sealed"
    verified = [e.data for e in store.ledger.entries() if e.type == "verified"]
    # The originals are read once (reread_original is off by default); the stored copies again.
    assert len(verified) == 3 and all(v["stored_reread"] and not v["source_reread"] for v in verified)
    report = verify_store(store.layout.root)
    assert report.ok, report.problems
    assert {p.name for p in drop.iterdir()} == {"segment-0001.mp4", "scene.jpg", "statement.wav"}, (
        "the local source leaves its originals alone"
    )


async def test_offering_the_same_directory_again_acquires_nothing_new(
    store: StationStore, drop: Path
) -> None:
    pipeline = IngestPipeline(store, SETTINGS)
    first = await pipeline.ingest(local_source(drop), local_source(drop).listing().items)
    head = store.ledger.head()[0]
    second = await pipeline.ingest(local_source(drop), local_source(drop).listing().items)
    assert second.outcome is IngestOutcome.DONE
    assert sorted(second.sealed) == sorted(first.sealed)
    assert store.ledger.head()[0] == head, "nothing new on the ledger: the items were already sealed"


async def test_a_file_replaced_under_the_same_name_is_a_new_original_linked_as_duplicate(
    store: StationStore, drop: Path, tmp_path: Path
) -> None:
    pipeline = IngestPipeline(store, SETTINGS)
    await pipeline.ingest(local_source(drop), local_source(drop).listing().items)
    # The same bytes again under another name, and a rewritten file under an old name.
    shutil.copy(drop / "scene.jpg", drop / "scene-copy.jpg")
    make_jpg(tmp_path / "other.jpg", seed=99)
    os.replace(tmp_path / "other.jpg", drop / "statement.wav")
    run = await pipeline.ingest(local_source(drop), local_source(drop).listing().items)
    assert run.outcome is IngestOutcome.DONE
    assert store.conn.execute("SELECT COUNT(*) FROM items WHERE path IS NOT NULL").fetchone()[0] == 5
    duplicates = [e for e in store.ledger.entries() if e.type == "duplicate"]
    assert len(duplicates) == 1 and len(duplicates[0].data["same_as"]) == 1
    assert verify_store(store.layout.root).ok


async def test_a_symlink_in_the_directory_is_refused_and_never_followed(
    store: StationStore, drop: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "station.key"
    secret.write_bytes(b"not for the store")
    (drop / "evil.jpg").symlink_to(secret)
    listing = local_source(drop).listing()
    assert [name for name, _ in listing.refused] == ["evil.jpg"]
    assert "evil.jpg" not in {o.name for o in listing.items}


async def test_a_file_changed_after_listing_is_not_sealed_as_listed(store: StationStore, drop: Path) -> None:
    listing = local_source(drop).listing()
    with (drop / "scene.jpg").open("ab") as f:
        f.write(b"appended after listing")
    run = await IngestPipeline(store, SETTINGS).ingest(local_source(drop), listing.items)
    assert run.outcome is IngestOutcome.DONE
    assert len(run.sealed) == 2
    failed = next(w for w in run.items if w.offered.name == "scene.jpg")
    assert failed.state == "failed"
    reasons = [e.data["reason"] for e in store.ledger.entries() if e.type == "error"]
    assert any("changed since listing" in r for r in reasons), reasons
    assert not list(store.layout.tmp.iterdir())


# -- a stream source: bytes that arrive once, like a GB/T 28181 download --------------------------


class PipeReader:
    """An ItemReader over the stdout of a real ffmpeg muxing MPEG-PS (what GB/T 28181 carries)."""

    def __init__(self, seconds: float) -> None:
        self.process = subprocess.Popen(
            [
                "ffmpeg", "-hide_banner", "-nostdin", "-v", "error",
                "-f", "lavfi", "-i", f"testsrc2=size=352x288:rate=25:duration={seconds}",
                "-c:v", "libx264", "-preset", "ultrafast", "-f", "mpeg", "pipe:1",
            ],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()

    def readinto(self, buffer: memoryview) -> int:
        try:
            return os.readv(self.fd, [buffer])
        except OSError as exc:
            raise read_error(exc, "stream") from exc

    def check_unchanged(self) -> None:
        if self.process.wait(timeout=30) != 0:
            raise read_error(OSError(5, "ffmpeg failed"), "stream")

    @property
    def cache_bypass(self) -> ReadMethod | None:
        return None  # bytes from a pipe: there is no cached original to bypass, nor a file to check

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


class StreamSource:
    kind = "gb28181"
    device = "34020000001320000001"

    def reachable(self) -> bool:
        return True


def stream_item(seconds: float) -> OfferedItem:
    origin = Origin(
        device=StreamSource.device,
        officer_no="",
        original={"name": "download.ps", "channel": "34020000001320000001"},
        source={"kind": "gb28181", "station": "TEST-STATION", "channel": StreamSource.device},
        time={"recorded_start": "2026-11-20T08:00:00", "station_clock_synchronised": True},
        case={"case_number": "", "important": False},
    )
    return OfferedItem(
        key=OriginalKey("gb28181", StreamSource.device, "2026-11-20T08:00:00/2026-11-20T08:00:02"),
        name="download.ps",
        display="channel 34020000001320000001 08:00:00-08:00:02",
        size=None,
        origin=origin,
        open=lambda: PipeReader(seconds),
        reopen=None,
    )


async def test_a_stream_without_a_rereadable_original_is_verified_against_the_disk_only(
    store: StationStore,
) -> None:
    run = await IngestPipeline(store, SETTINGS).ingest(StreamSource(), [stream_item(2.0)])
    assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
    verified = [e.data for e in store.ledger.entries() if e.type == "verified"]
    assert verified[0]["stored_reread"] is True
    assert verified[0]["source_reread"] is False, "the ledger says the original could not be read again"
    manifest = manifests(store)["download.ps"]
    assert manifest["media"]["container"] == "mpeg"
    assert manifest["source"]["kind"] == "gb28181"
    acquired = next(e.data for e in store.ledger.entries() if e.type == "acquired")
    assert acquired["size"] == manifest["size"] > 0
    assert verify_store(store.layout.root).ok


async def test_a_stream_longer_than_the_bound_is_refused_and_leaves_nothing(store: StationStore) -> None:
    settings = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024, max_item_bytes=100_000)
    run = await IngestPipeline(store, settings).ingest(StreamSource(), [stream_item(4.0)])
    assert run.outcome is IngestOutcome.DONE and run.sealed == []
    assert run.items[0].state == "failed"
    reasons = [e.data["reason"] for e in store.ledger.entries() if e.type == "error"]
    assert any("more than 100000 bytes" in r for r in reasons), reasons
    assert not list(store.layout.tmp.iterdir())
    assert store.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
