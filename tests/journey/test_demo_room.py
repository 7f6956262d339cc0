"""`edge demo --room` end to end: a session in a room with a simulated GB/T 28181 IPC (simulators.gb28181
over real SIP and RTP sockets, stalling 3 s once) and an ffmpeg test source records, is stopped, and every
segment and the session manifest go to the embedded central. The JSON summary is checked against the
station's ledger and uploads, and against the central's own index, with each receipt verified again
here with the central's public key."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from edge.central.config import CentralLayout
from edge.central.sqlite.index import SqliteIndex
from edge.cli import main
from edge.custody.keys import load_public_key
from edge.custody.receipt import verify_receipt
from edge.demo import STATION_ID, DemoOptions, run_demo
from edge.ingest.store import open_db
from tests.gb28181.media_sender import HAVE_FFMPEG
from tests.prerequisites import require

Journey = tuple[Path, dict[str, Any], str]


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Journey:
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    workdir = tmp_path_factory.mktemp("room-journey")
    out = io.StringIO()
    # The IPC's stream stalls 5 s into its Play (half of the looped 10 s file) for 3 s; 14 s covers the stall
    # and the media coming again, on a loaded machine too.
    options = DemoOptions(workdir=workdir, json_output=True, room=True, room_seconds=14.0, segment_s=2.0,
                          gb_faults=("stall=3",))
    with contextlib.redirect_stdout(out):
        code = asyncio.run(run_demo(options))
    text = out.getvalue()
    assert code == 0, text[-3000:]
    return workdir, json.loads(text.strip().splitlines()[-1]), text


def _ledger(store: Path, session: str) -> list[tuple[int, str, str | None, dict[str, Any]]]:
    conn = open_db(store / "state.db")
    try:
        rows = conn.execute("SELECT seq, type, item, data FROM ledger ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(seq, type_, item, data) for seq, type_, item, text in rows
            if (data := json.loads(text)).get("room_session") == session]


def test_the_summary_is_what_the_ledger_says(journey: Journey) -> None:
    _, summary, text = journey
    entries = _ledger(Path(summary["store"]), summary["session"])
    sealed = [(item, data) for _, type_, item, data in entries if type_ == "segment_sealed"]
    assert summary["sealed"] == len(sealed) == summary["segments"]  # every segment closed was sealed
    by_source = {s: sum(1 for _, d in sealed if d["source"] == s) for s in ("ipc", "pano")}
    assert by_source["ipc"] >= 3 and by_source["pano"] >= 5, by_source
    assert {s: c["sealed"] for s, c in summary["sources"].items()} == by_source
    assert summary["max_seal_latency_s"] == round(max(d["seal_latency_s"] for _, d in sealed), 3)
    # The stall is the session's one interruption, on the GB source, with its reason and times; none on the
    # other. A source whose first media came late (the GB INVITE and its first key frame take seconds on
    # a loaded machine) has that unrecorded start as a gap of its own (source-late-start), never hidden.
    closed = [d for _, type_, _, d in entries if type_ == "gap" and d["state"] == "closed"]
    late = [d for d in closed if d["reason"].startswith("source-late-start")]
    stalls = [d for d in closed if d not in late]
    assert len(stalls) == 1 and stalls[0]["source"] == "ipc" and stalls[0]["live"] == "stalled"
    assert all(d["to"] <= stalls[0]["from"] for d in late), (late, stalls)  # a late start comes first
    assert len(summary["gaps"]) == len(closed)
    gap = next(g for g in summary["gaps"] if not g["reason"].startswith("source-late-start"))
    assert (gap["source"], gap["from"], gap["to"], gap["reason"]) == (
        "ipc", stalls[0]["from"], stalls[0]["to"], stalls[0]["reason"])
    assert "stalled" in gap["reason"] and 2.5 <= gap["duration_s"] <= 8
    stopped = [d for _, type_, _, d in entries if type_ == "session_stopped"]
    assert len(stopped) == 1 and stopped[0]["segments"] == len(sealed) and stopped[0]["gaps"] == len(closed)
    assert summary["manifest_item"] == stopped[0]["manifest_item"]
    assert summary["store_verified"] is True and summary["central_verified"] is True
    assert summary["errors"] == []
    assert f"segments {len(sealed)}, sealed {len(sealed)}, gaps {len(closed)}" in text


def test_every_item_was_received_centrally_with_a_receipt_that_verifies(journey: Journey) -> None:
    workdir, summary, _ = journey
    store = Path(summary["store"])
    entries = _ledger(store, summary["session"])
    segments = {item for _, type_, item, _ in entries if type_ == "segment_sealed"}
    (made,) = [data for _, type_, _, data in entries if type_ == "room_products"]
    joined = {j["item"] for j in made["joined"]}
    assert {j["source"] for j in made["joined"]} == {"ipc", "pano"} and made["statement_item"]
    expected = segments | {summary["manifest_item"], made["statement_item"]} | joined
    items = summary["items"]
    assert {i["item"] for i in items} == expected and len(items) == len(expected)
    assert {i["role"] for i in items if i["item"] in joined} == {"joined-recording"}
    assert summary["received"] == summary["receipts"] == len(expected)
    central_key = load_public_key(workdir / "station-identity" / "central-signing.pub")
    conn = open_db(store / "state.db")
    index = SqliteIndex.open(CentralLayout(Path(summary["central_store"])).index_db)
    try:
        for item in items:
            assert item["received"] is True and item["receipt_verified"] is True
            state, receipt = conn.execute("SELECT state, receipt FROM uploads WHERE item = ?",
                                          (item["item"],)).fetchone()
            sha256 = conn.execute("SELECT sha256 FROM items WHERE item = ?", (item["item"],)).fetchone()[0]
            record = index.item(item["item"])
            assert record is not None and record.sha256 == sha256 == item["sha256"]
            assert record.station == STATION_ID and state == "receipted"
            assert verify_receipt(json.loads(receipt), central_key, expected_item=item["item"],
                                  expected_sha256=sha256, expected_station=STATION_ID) == []
        # Control: the same check refuses a receipt for another content hash.
        first = items[0]
        receipt = conn.execute("SELECT receipt FROM uploads WHERE item = ?", (first["item"],)).fetchone()[0]
        assert verify_receipt(json.loads(receipt), central_key, expected_item=first["item"],
                              expected_sha256="0" * 64, expected_station=STATION_ID) != []
    finally:
        index.close()
        conn.close()


def test_the_cli_refuses_bad_room_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--room", "--seconds", "0"]) != 0
    assert "--seconds" in capsys.readouterr().err
    assert main(["demo", "--room", "--gb-fault", "no-such-fault"]) != 0
    assert "no-such-fault" in capsys.readouterr().err
