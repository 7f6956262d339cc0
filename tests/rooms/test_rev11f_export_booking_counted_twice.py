"""Review rev11f (issue 11, the store's booking ledger), LOW: a disc export books the whole staging size
(the staged files and the image) before it stages, and keeps that booking unchanged to its end
(edge.rooms.export: a docking copy lowers its booking as it writes, `KeptSpace.wrote`; the export never
does). While xorriso writes the image, the staged files are on the disk (out of the free figure) and still in
the booking: counted twice. A room's start during the export (edge.rooms.service counts every booking) and
every docking copy's check then see the session's size once more than will be written: a room refused
507 "not enough space" on a disk that has room for it, its interview waiting for an export of a stopped
session, which could itself have waited.

Real session (ffmpeg lavfi source), real pipeline and store, real xorriso. The snapshot is taken as xorriso
starts (edge.rooms.export._run wrapped). Control: at the booking's start (nothing staged) booking plus staged
bytes is the estimate."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edge.durable.files import make_dirs_durable
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import export
from edge.rooms.export import export_session, space_needed
from tests.prerequisites import require_tool
from tests.rooms.conftest import STATION, LedgerWatch
from tests.rooms.test_attach_export import FIELDS, _session, agent_api, short_dir

pytestmark = pytest.mark.usefixtures("ffmpeg")
__all__ = ["short_dir"]  # a fixture, imported to be used here


def _staged_bytes(work: Path) -> int:
    staging = [d for d in work.glob("export-*") if d.is_dir()]
    return sum(p.stat().st_size for d in staging for p in d.rglob("*") if p.is_file())


async def test_an_export_s_staged_bytes_are_not_booked_again_while_xorriso_writes(
        store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, short_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xorriso = require_tool("xorriso")
    snapshots: dict[str, tuple[int, int]] = {}
    work = tmp_path / "work"
    real_run, real_dirs = export._run, make_dirs_durable

    def booked() -> int:
        return sum(b.remaining for b in pipeline.kept_space.booked() if b.kind == export.BOOKING_KIND)

    def dirs(path: Path) -> None:
        snapshots.setdefault("staging begins", (booked(), _staged_bytes(work)))
        real_dirs(path)

    async def run(argv: list[str]) -> str | None:
        snapshots["xorriso starts"] = (booked(), _staged_bytes(work))
        return await real_run(argv)

    monkeypatch.setattr(export, "make_dirs_durable", dirs)
    monkeypatch.setattr(export, "_run", run)
    async with agent_api(store, pipeline, short_dir / "api.sock") as service:
        session = await _session(service, watch)
        sizes = [r.size for e in watch.of("joined", room_session=session)
                 if (r := pipeline.repository.item(str(e.item))) is not None]
        estimate = space_needed(sizes).staging_bytes
        disc = await export_session(pipeline, session, case_number=FIELDS["case_number"], station_id=STATION,
                                    by="op", work_dir=work, xorriso=xorriso)
        os.unlink(disc.path)
        shutil.rmtree(work, ignore_errors=True)
    booked_at_start, staged_at_start = snapshots["staging begins"]
    assert staged_at_start == 0 and booked_at_start >= estimate  # control: the whole estimate, nothing staged
    booked_now, staged_now = snapshots["xorriso starts"]
    assert staged_now > 0
    assert booked_now + staged_now <= booked_at_start, (
        f"as xorriso starts {staged_now} bytes are staged on the disk and the export still books "
        f"{booked_now} of its {booked_at_start}: the staged bytes counted twice against every room start and "
        "copy meanwhile")
