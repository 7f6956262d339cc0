"""Review 22: a crash while a download's raw PS is being sealed makes the next download of that recording
seal the OLD bytes under the NEW download's manifest.

The pipeline resumes an acquisition left `copied` by a crash from its copy in the store's tmp directory
(the copy and its hash were committed before the crash). For a USB recorder that is right: the original
is the same file on the same recorder. For a GB/T 28181 download it is not: the start removes the
interrupted download's spool files (scheduler `_clear_spool`), the recording is downloaded again into a
new spool file, and `ingest_download` offers it under the same key (`raw_key(ref, attempt=1)`: the key
is made from the recording, never the download). `admit` finds the `copied` row, the copy is skipped, and
`_seal_and_verify` seals the first transfer's bytes with a manifest built from the second transfer
(`original.bytes`, gaps, SSRC, `complete`, the Call-ID and clock offset in the facts), beside the first
transfer's `acquired` entry. The new download's bytes are thrown away with the spool file, and the MP4
made from them names, as what it was converted from, a SHA-256 that no sealed raw PS has. Nothing on the
ledger says so; `edge verify` passes (the item's bytes match its own hash).

The crash is a BaseException raised where the seal reads the copy's media facts (what a kill -9 or a
power loss there leaves: the row `copied`, the copy in tmp); the restart is a new store and pipeline on
the same directory, with the spool cleared as the scheduler's start does. Real receiver, real RTP over
UDP, real ffmpeg. Control: without the crash, the second device's recording is sealed as it came."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.gb28181.ps import Codec
from edge.ingest import pipeline as pipeline_module
from edge.ingest.facts import media_facts_and_seal
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.gb28181 import GbDownloads, GbRecordings
from tests.gb28181.media_sender import HAVE_FFMPEG, SourceMedia, make_source
from tests.gb28181.test_source_downloads import CASE, DEVICE, RECORDINGS, Device
from tests.prerequisites import require

RECORDING = RECORDINGS[0]
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=64 * 1024)


class Crash(BaseException):
    """The process dying where it was (nothing after this point runs)."""


@pytest.fixture(scope="module")
def first_media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("first"), Codec.H264, seconds=2)


@pytest.fixture(scope="module")
def second_media(tmp_path_factory: pytest.TempPathFactory) -> SourceMedia:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    return make_source(tmp_path_factory.mktemp("second"), Codec.H264, seconds=3)


class Recording(Device):
    """A Device that keeps a copy of each raw PS its session received (what the transfer really brought)."""

    def __init__(self, media: SourceMedia) -> None:
        super().__init__(media)
        self.received: list[bytes] = []

    async def start_download(self, ref: Any, raw_path: Path) -> Any:
        transfer = await super().start_download(ref, raw_path)
        self.received.append(raw_path.read_bytes())
        return transfer


@pytest.fixture
def crash_at_seal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise Crash("power lost while the copy was being sealed")

    monkeypatch.setattr(pipeline_module, "media_facts_and_seal", crash)
    yield
    monkeypatch.undo()


def _clear_spool(spool: Path) -> None:
    for leftover in spool.iterdir():
        leftover.unlink()


def _sealed_raw(store: StationStore) -> tuple[str, int, dict[str, Any]]:
    repository = IngestRepository(store)
    for (item,) in store.conn.execute("SELECT item FROM items"):
        record = repository.item(item)
        manifest = None if record is None else record.manifest
        if record is not None and manifest is not None and manifest["original"]["role"] == "raw-ps":
            return record.sha256, record.size, manifest
    raise AssertionError("no raw PS sealed")


async def _download(store_dir: Path, spool: Path, device: Device) -> None:
    store = StationStore(store_dir, "TEST-STATION")
    try:
        source = GbRecordings(DEVICE, spool, station_id="TEST-STATION", case=CASE)
        downloads = GbDownloads(IngestPipeline(store, SETTINGS), source, device.start_download)
        await downloads.download([RECORDING])
    finally:
        store.close()


async def _after_restart(tmp_path: Path, second_media: SourceMedia) -> tuple[bytes, str, int, dict[str, Any]]:
    spool = tmp_path / "spool"
    _clear_spool(spool)  # what the scheduler's start does with an interrupted download's files
    device = Recording(second_media)
    await _download(tmp_path / "store", spool, device)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        return (device.received[-1], *_sealed_raw(store))
    finally:
        store.close()


async def test_a_crash_while_sealing_does_not_seal_the_old_bytes_under_the_next_downloads_manifest(
        tmp_path: Path, first_media: SourceMedia, second_media: SourceMedia, crash_at_seal: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    first = Recording(first_media)
    with pytest.raises(Crash):
        await _download(tmp_path / "store", spool, first)
    monkeypatch.undo()  # the restart: a process without the fault
    received, sha256, size, manifest = await _after_restart(tmp_path, second_media)
    assert manifest["original"]["bytes"] == len(received)  # the manifest describes the second transfer
    assert (sha256, size) == (hashlib.sha256(received).hexdigest(), len(received)), (
        f"the sealed raw PS is {size} bytes, sha256 {sha256[:16]}…, but its manifest describes the second "
        f"transfer ({manifest['original']['bytes']} bytes received, sha256 "
        f"{hashlib.sha256(received).hexdigest()[:16]}…): the first, crashed download's bytes were sealed "
        f"(they are the first transfer's: {hashlib.sha256(first.received[0]).hexdigest()[:16]}…)")


async def test_control_without_the_crash_the_download_is_sealed_as_it_came(
        tmp_path: Path, second_media: SourceMedia) -> None:
    (tmp_path / "spool").mkdir()
    received, sha256, size, manifest = await _after_restart(tmp_path, second_media)
    assert manifest["original"]["bytes"] == len(received)
    assert (sha256, size) == (hashlib.sha256(received).hexdigest(), len(received))


# A crash after the raw PS was sealed, while its MP4 was: the recording counts as downloaded (its raw PS
# is sealed complete), so no later pass offers it again, and nothing else makes the MP4: the MP4's
# acquisition row stays in progress and its copy in the store's tmp for good, and no ledger entry says
# that the recording has no MP4.


@pytest.fixture
def crash_at_mp4_seal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = media_facts_and_seal

    def crash_for_mp4(part: Path, size: int, ext: str) -> Any:
        if "mp4" in str(ext):
            raise Crash("power lost while the MP4 was being sealed")
        return real(part, size, ext)

    monkeypatch.setattr(pipeline_module, "media_facts_and_seal", crash_for_mp4)
    yield
    monkeypatch.undo()


def _roles_and_open_rows(store: StationStore) -> tuple[list[str], int]:
    repository = IngestRepository(store)
    roles = []
    for (item,) in store.conn.execute("SELECT item FROM items"):
        record = repository.item(item)
        if record is not None and record.manifest is not None:
            roles.append(record.manifest["original"]["role"])
    open_rows = store.conn.execute(
        "SELECT count(*) FROM acquisitions WHERE state IN ('pending', 'copied', 'verified')").fetchone()[0]
    return sorted(roles), int(open_rows)


async def test_a_crash_while_sealing_the_mp4_leaves_the_recording_with_an_mp4_or_says_so(
        tmp_path: Path, first_media: SourceMedia, crash_at_mp4_seal: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(Crash):
        await _download(tmp_path / "store", spool, Recording(first_media))
    monkeypatch.undo()
    _clear_spool(spool)
    for _ in range(2):  # the passes after the restart
        await _download(tmp_path / "store", spool, Recording(first_media))
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        roles, open_rows = _roles_and_open_rows(store)
        said = [e.data for e in store.ledger.entries() if e.type == "error" and "mp4" in str(e.data).lower()]
        assert roles == ["mp4", "raw-ps"] or said, (
            f"sealed: {roles}; {open_rows} acquisition(s) left in progress; no MP4 was made after the "
            "restart and no ledger entry says the recording has none")
    finally:
        store.close()


async def test_control_without_the_crash_the_recording_has_both_items(
        tmp_path: Path, first_media: SourceMedia) -> None:
    (tmp_path / "spool").mkdir()
    await _download(tmp_path / "store", tmp_path / "spool", Recording(first_media))
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        assert _roles_and_open_rows(store) == (["mp4", "raw-ps"], 0)
    finally:
        store.close()
