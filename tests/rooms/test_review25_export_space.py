"""Review 25: `edge room export` staged about twice the session's size with no look at the free space.

The export (edge.rooms.export) now estimates what it needs before it copies anything (the staged files and
the image beside them, on the staging file system above the store's reserve; the image in the output's
file system, as `edge room export` reports it) and refuses with the figures and a `refused` entry when it
does not fit; a disk that fills anyway (another writer after the check) ends the export with a refusal
too, and no staging copy or half image is left behind. Real files systems that really fill: a small tmpfs
(mounting needs root; under CI a missing prerequisite fails), real xorriso, ffmpeg, pipeline and ledger.
Each refusal has its control: the same export with room goes through.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import export
from edge.rooms.export import ExportRefused, export_session, space_needed
from edge.rooms.service import RoomRefused
from tests.prerequisites import require, require_tool
from tests.rooms.conftest import STATION, LedgerWatch
from tests.rooms.test_attach_export import FIELDS, _cli, _session, agent_api

pytestmark = pytest.mark.usefixtures("ffmpeg")

MIB = 1 << 20


@pytest.fixture
def xorriso() -> str:
    return require_tool("xorriso")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MiB file system that really fills up."""
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    require(shutil.which("mount") is not None, "needs mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _leave_free(disk: Path, free: int) -> None:
    """Fill `disk` (a filler file, replaced) until about `free` bytes are left."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    size = shutil.disk_usage(disk).free - free
    assert size > 0
    with open(filler, "wb") as writer:
        os.posix_fallocate(writer.fileno(), 0, size)


def _leftovers(work_dir: Path) -> list[str]:
    return sorted(p.name for p in work_dir.glob("export-*")) if work_dir.exists() else []


def test_the_estimate_covers_the_files_twice_with_margin() -> None:
    needed = space_needed([100 * MIB, 5 * MIB])
    assert needed.staged_bytes >= 105 * MIB
    assert needed.image_bytes >= needed.staged_bytes
    assert needed.staging_bytes == needed.staged_bytes + needed.image_bytes >= 210 * MIB


async def test_an_export_that_does_not_fit_is_refused_with_the_figures_and_leaves_nothing(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, small_disk: Path, tmp_path: Path,
    xorriso: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = Path(tempfile.mkdtemp(prefix="edge-rooms-", dir="/tmp"))  # a socket's path is short
    try:
        await _exports(store, pipeline, watch, small_disk, tmp_path, xorriso, monkeypatch, socket)
    finally:
        shutil.rmtree(socket, ignore_errors=True)


async def _exports(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, small_disk: Path, tmp_path: Path,
    xorriso: str, monkeypatch: pytest.MonkeyPatch, socket: Path
) -> None:
    async with agent_api(store, pipeline, socket / "api.sock") as service:
        session = await _session(service, watch)
        work = small_disk / "work"
        sizes = [r.size for e in watch.of("joined", room_session=session)
                 if (r := pipeline.repository.item(str(e.item))) is not None]
        needed = space_needed(sizes)  # under-counts the manifest and statement: a lower bound

        async def export_to_disk(**options: object) -> export.ExportedDisc:
            return await export_session(pipeline, session, case_number=FIELDS["case_number"],
                                        station_id=STATION, by="op", work_dir=work,
                                        **{"xorriso": xorriso, **options})  # type: ignore[arg-type]

        # 1. Too little room to stage: refused before anything is copied, the figures named.
        _leave_free(small_disk, needed.staging_bytes - 2 * MIB)
        with pytest.raises(ExportRefused, match="not enough free space to stage the disc") as refused:
            await export_to_disk()
        assert refused.value.status == 507
        entry = watch.of("refused", action="export", room_session=session)[-1]
        assert "MiB free" in entry.data["reason"] and "store's reserve" in entry.data["reason"]
        assert _leftovers(work) == []
        # The store's reserve counts too: room for the export alone is not enough.
        _leave_free(small_disk, needed.staging_bytes + 8 * MIB)
        with pytest.raises(ExportRefused, match=r"above the store's reserve of 16\.0 MiB"):
            await export_to_disk(reserve_bytes=16 * MIB)
        # Control: the same export with room goes through, and only the image is left (for the caller).
        disc = await export_to_disk(reserve_bytes=2 * MIB)
        assert disc.path.is_file() and disc.size > sum(sizes)
        assert _leftovers(work) == [disc.path.name]
        disc.path.unlink()
        exported = len(watch.of("exported", room_session=session))
        assert exported == 1

        # 2. The disk fills while xorriso writes (another writer took the space after the check): refused,
        # staging and the half image removed.
        wrapper = tmp_path / "xorriso-on-a-filling-disk"
        wrapper.write_text(f"#!/bin/sh\nhead -c {64 * MIB} /dev/zero > {small_disk}/other 2>/dev/null\n"
                           f'exec {xorriso} "$@"\n')
        wrapper.chmod(stat.S_IRWXU)
        with pytest.raises(ExportRefused, match="xorriso could not write the image") as refused:
            await export_to_disk(xorriso=str(wrapper))
        assert refused.value.status == 507
        assert "filled up" in watch.of("refused", action="export", room_session=session)[-1].data["reason"]
        assert _leftovers(work) == []
        (small_disk / "other").unlink()

        # 3. The disk is full while the files are copied (the free space read was stale): refused, nothing
        # left.
        _leave_free(small_disk, 0)
        monkeypatch.setattr(export, "free_bytes", lambda _: 1 << 40)
        with pytest.raises(ExportRefused, match="staging the disc failed: No space left") as refused:
            await export_to_disk()
        assert refused.value.status == 507
        assert _leftovers(work) == []
        monkeypatch.undo()
        assert len(watch.of("exported", room_session=session)) == exported

        # 4. The operator's output has no room for the image: `edge room export` says how much it has, the
        # agent refuses on its ledger before it stages anything; no output file.
        (small_disk / "filler").unlink()
        out_dir = small_disk / "out"
        out_dir.mkdir()
        _leave_free(small_disk, needed.image_bytes // 2)
        output = out_dir / "disc.iso"
        assert await _cli(socket / "api.sock", "export", session, str(output)) == 65
        assert not output.exists()
        reason = watch.of("refused", action="export", room_session=session, by="root")[-1].data["reason"]
        assert "not enough free space for the output" in reason and "MiB free" in reason
        assert not list((store.layout.root / "rooms" / "products").rglob("export-*"))
        # Control: an output with room.
        elsewhere = tmp_path / "disc.iso"
        assert await _cli(socket / "api.sock", "export", session, str(elsewhere)) == 0
        assert elsewhere.stat().st_size > sum(sizes)
        # A hostile free-space figure from a caller is refused on the ledger, and nothing is exported.
        with pytest.raises(RoomRefused, match="non-negative decimal"):
            await service.export(session, by="op", output_free_bytes="-1e9")
        assert "non-negative decimal" in watch.of("refused", action="export")[-1].data["reason"]
        assert len(watch.of("exported", room_session=session)) == exported + 1
