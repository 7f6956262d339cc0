"""Documents attached to a session and its disc export (edge.rooms.documents, edge.rooms.export), through
the local API and `edge room attach|export` with real ffmpeg, xorriso, pipeline, store and ledger: a PDF
is sealed as an item of the session, its type told by content, its name never a path nor shown raw;
hostile documents are refused on the ledger (each with the control that the same route takes a good
one); the disc image lists with xorriso and every file on it gives the ledger's hash, also to
sha256sum -c; a joined file altered after sealing refuses the export (the export before it, the
control, went through)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config.station import ApiSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import room_routes
from edge.observe.room_files_cli import cmd_room_files
from edge.rooms import documents
from edge.rooms.export import SUMS_NAME, VERIFY_PAGE, disc_argv, extract_argv
from edge.rooms.service import RoomRefused, RoomService
from edge.verify.station import verify_store
from tests.prerequisites import require_tool
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000888", "collector": "张三", "subject": "询问过程",
                          "persons": [{"name": "李四", "role": "被询问人"}]}
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
HOSTILE_NAME = "../../etc/passwd\u202efdp.exe"


@pytest.fixture
def xorriso() -> str:
    return require_tool("xorriso")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-rooms-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def agent_api(
    store: StationStore, pipeline: IngestPipeline, socket: Path
) -> AsyncIterator[RoomService]:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    api = LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store, ApiSection(socket_path=socket),
                   [room_routes(service)])
    await api.start()
    try:
        async with running(service):
            yield service
    finally:
        await api.stop()


async def _post(socket: Path, path: str, data: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as client, \
            client.post(f"http://station{path}", data=data) as response:
        return response.status, await response.json(content_type=None)


async def _cli(socket: Path, *argv: str) -> int:
    args = argparse.Namespace(socket=str(socket), config=None, json=False, kind="笔录", output=None)
    args.action, args.session = argv[0], argv[1]
    if args.action == "attach":
        args.file = argv[2]
    else:
        args.output = argv[2]
    code: int = await asyncio.to_thread(cmd_room_files, args)
    return code


async def _session(service: RoomService, watch: LedgerWatch) -> str:
    session = await service.start("xw-1", FIELDS, by="op")
    await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2, timeout_s=90)
    await service.stop("xw-1", by="op")
    return session.session


def test_the_disc_command_lines_are_lists() -> None:
    argv = disc_argv("xorriso", Path("/w/stage"), Path("/w/out.iso"), "EDGE_1234")
    assert argv[argv.index("-as") + 1] == "mkisofs" and argv[argv.index("-iso-level") + 1] == "3"
    assert argv[argv.index("-V") + 1] == "EDGE_1234" and argv[argv.index("-o") + 1] == "/w/out.iso"
    assert argv[-1] == "/w/stage" and {"-r", "-J"} <= set(argv)
    assert extract_argv("xorriso", Path("/w/out.iso"), Path("/w/x"))[-3:] == ["-extract", "/", "/w/x"]


async def test_documents_are_attached_by_content_and_hostile_ones_refused(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, short_dir: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = short_dir / "api.sock"
    monkeypatch.setattr(documents, "MAX_DOCUMENT_BYTES", 4096)
    async with agent_api(store, pipeline, socket) as service:
        session = await _session(service, watch)
        base = f"/api/v1/room-sessions/{session}/documents"
        status, attached = await _post(socket, f"{base}?kind=笔录&name={HOSTILE_NAME}", PDF)
        assert status == 200, attached
        assert attached["type"] == "application/pdf" and attached["kind"] == "笔录"
        assert attached["sha256"] == hashlib.sha256(PDF).hexdigest() and attached["size"] == len(PDF)
        entry = watch.of("attached", room_session=session)[0]
        assert entry.item == attached["item"] and entry.data["by"] == "root"
        assert "\u202e" not in entry.data["name"] and "\\u202e" in entry.data["name"]  # shown, not obeyed
        record = IngestRepository(store).item(attached["item"])
        assert record is not None and record.path is not None
        assert Path(record.path).name == f"{attached['item']}.pdf"  # the station's name, not the sender's
        assert (store.layout.root / record.path).read_bytes()[: record.size] == PDF
        assert record.manifest is not None and record.manifest["case"]["case_number"] == FIELDS["case_number"]
        refusals = [
            (f"{base}?name=x.pdf", b"MZ\x90\x00 not a pdf at all", 415),  # an executable named .pdf
            (f"{base}?name=x.pdf", b"", 400),
            (f"{base}?name=x.png", PNG + bytes(5000), 413),
            (f"{base}?kind=%E2%80%AE", PDF, 400),  # a kind with a bidi override
            ("/api/v1/room-sessions/00000000-0000-4000-8000-000000000000/documents", PDF, 404),
            ("/api/v1/room-sessions/..%2F..%2Fetc/documents", PDF, 400),
        ]
        for path, body, expected in refusals:
            status, answer = await _post(socket, path, body)
            assert status == expected, (path, answer)
        assert len(watch.of("refused", action="attach")) == len(refusals)
        # Control: the same route still takes a good image, and the CLI attaches a file.
        status, png = await _post(socket, f"{base}?name=scan.png", PNG)
        assert status == 200 and png["type"] == "image/png"
        scan = short_dir / "笔录 第1页.pdf"
        scan.write_bytes(PDF + b"% page 1\n")
        assert await _cli(socket, "attach", session, str(scan)) == 0
    assert len(watch.of("attached", room_session=session)) == 3
    assert not list((store.layout.root / "rooms" / "products").rglob("*.part"))  # refused ones went
    report = verify_store(store.layout.root)
    assert report.ok, report.problems


async def test_the_disc_image_lists_and_verifies_and_a_tampered_recording_refuses_it(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, short_dir: Path, tmp_path: Path,
    xorriso: str
) -> None:
    socket = short_dir / "api.sock"
    async with agent_api(store, pipeline, socket) as service:
        recording = await service.start("xw-1", FIELDS, by="op")
        with pytest.raises(RoomRefused, match="has not stopped"):
            await service.export(recording.session, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2, timeout_s=90)
        await service.stop("xw-1", by="op")
        session = recording.session
        status, attached = await _post(socket, f"/api/v1/room-sessions/{session}/documents?name=r.pdf", PDF)
        assert status == 200
        image = tmp_path / "disc.iso"
        assert await _cli(socket, "export", session, str(image)) == 0
        exported = watch.of("exported", room_session=session)
        assert len(exported) == 1 and exported[0].data["by"] == "root"
        data = image.read_bytes()
        assert hashlib.sha256(data).hexdigest() == exported[0].data["image_sha256"]
        assert not list((store.layout.root / "rooms" / "products").rglob("*.iso"))  # handed on, gone
        listing = subprocess.run([xorriso, "-indev", str(image), "-find", "/", "-type", "f"],
                                 capture_output=True, text=True, check=True, timeout=60).stdout
        assert "'/recordings/a.mp4'" in listing and f"'/{SUMS_NAME}'" in listing
        into = tmp_path / "disc"
        subprocess.run(extract_argv(xorriso, image, into), capture_output=True, check=True, timeout=60)
        # Every file against the ledger: joined recording, manifest, statement, document.
        stopped = watch.of("room_products", room_session=session)[0].data
        joined = watch.of("joined", room_session=session, source="a")[0]
        expected = {"recordings/a.mp4": joined.data["sha256"],
                    "session-manifest.json": stopped["manifest_sha256"],
                    "statement-相关说明.txt": stopped["statement_sha256"],
                    "documents/document-1.pdf": attached["sha256"]}
        for name, sha256 in expected.items():
            assert hashlib.sha256((into / name).read_bytes()).hexdigest() == sha256, name
        checked = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=into, capture_output=True, text=True,
                                 timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count(": OK") == len(exported[0].data["files"]) >= 8
        page = (into / VERIFY_PAGE).read_text(encoding="utf-8")
        assert FIELDS["case_number"] in page and "sha256sum -c SHA256SUMS" in page
        assert store.key.public_key_b64 in page
        # The joined recording altered after sealing: the next export is refused, naming it.
        record = IngestRepository(store).item(str(joined.item))
        assert record is not None and record.path is not None
        stored = store.layout.root / record.path
        altered = bytearray(stored.read_bytes())
        altered[record.size // 2] ^= 0x01
        stored.write_bytes(bytes(altered))
        again = tmp_path / "again.iso"
        assert await _cli(socket, "export", session, str(again)) == 65
        assert not again.exists()
        refused = watch.of("refused", action="export", room_session=session, by="root")
        assert len(refused) == 1 and str(joined.item) in refused[0].data["reason"]
        assert "altered after sealing" in refused[0].data["reason"]
        assert len(watch.of("exported", room_session=session)) == 1
        assert not list((store.layout.root / "rooms" / "products").rglob("*"))  # staging went
