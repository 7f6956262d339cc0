"""The composite's feeds relayed by the agent (edge.rooms.feed_relay) in a real session (real ffmpeg, the
real pipeline, store and ledger): a composite that stops reading (SIGSTOP for 20 s) or dies (SIGKILL)
never holds up or restarts the sources, whose segments keep coming; the relay drops whole packets,
counts them in the session's status and puts the composite's loss of picture on the ledger as a gap;
the composite resumes (after SIGCONT, or its supervised restart) and records again. The relay's buffer
and pipes are made small here so that 20 s of a small test picture overflow them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from datetime import UTC, datetime
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.room_cli import _describe
from edge.rooms import feed_relay
from edge.rooms.recording import FEED_DROPPED_REASON, SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

STOPPED_S = 20.0
COMPOSITE = {"main": "a", "inset": "b", "size": "320x240", "rate": 10, "inset_width_pct": 25}


def _recording(store: StationStore, pipeline: IngestPipeline, **settings: Any) -> SessionRecording:
    base = rooms_config(lavfi_source("a", size="320x240", rate=10, audio=True),
                        lavfi_source("b", size="160x120", rate=10), **settings)
    room = base.room[0].model_dump()
    room["composite"] = COMPOSITE
    config = RoomsSection.model_validate({**base.model_dump(), "room": [room]})
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                          started_by="operator")
    return SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)


def _sealed(watch: LedgerWatch, source: str) -> int:
    return len(watch.of("segment_sealed", source=source))


def _feeds(recording: SessionRecording) -> dict[str, dict[str, Any]]:
    status = {s["source"]: s for s in recording.status()}
    return {feed["source"]: feed for feed in status["composite"]["feeds"]}


@pytest.fixture
def small_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_relay, "BUFFER_BYTES", 64 * 1024)
    monkeypatch.setattr(feed_relay, "PIPE_BYTES", 4096)


@pytest.mark.usefixtures("small_relay")
async def test_a_stopped_composite_holds_up_no_source_and_its_lost_picture_is_a_gap(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    # Liveness 1 + 40 s: the composite stopped for 20 s is not restarted (what is tested is the relay).
    recording = _recording(store, pipeline, stale_margin_s=40.0)
    task = asyncio.create_task(recording.run())
    stopped_pid = None
    try:
        await watch.until(lambda: all(_sealed(watch, s) >= 2 for s in ("a", "b", "composite")), timeout_s=90)
        stopped_pid = recording.sources["composite"].pid
        assert stopped_pid is not None
        before = {s: _sealed(watch, s) for s in ("a", "b", "composite")}
        os.kill(stopped_pid, signal.SIGSTOP)
        await asyncio.sleep(STOPPED_S)
        during = {s: _sealed(watch, s) - before[s] for s in ("a", "b")}
        feeds_stopped = _feeds(recording)
        shown = _describe("status", {"rooms": [{"room": "xw-1", "name": "第一询问室",
                                                "session": recording.session.to_json(),
                                                "sources": recording.status()}]})
        os.kill(stopped_pid, signal.SIGCONT)
        stopped_pid = None
        resumed_from = _sealed(watch, "composite")
        # Once packets go through again (DROP_SETTLE_S), each feed's drop is reported.
        await watch.until(lambda: _sealed(watch, "composite") >= resumed_from + 3 and {
            e.data.get("feed") for e in watch.of("gap", source="composite", state="closed")} >= {"a", "b"},
            timeout_s=90)
        runs = {s: recording.sources[s].runs for s in ("a", "b", "composite")}
        feeds_after = _feeds(recording)
    finally:
        if stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGCONT)
        recording.stop()
        await asyncio.wait_for(task, 90)
    # The sources recorded on, one segment a second, while the composite read nothing ...
    assert min(during.values()) >= STOPPED_S / 2, (during, before)
    assert runs["a"] == runs["b"] == 1 and not watch.of("gap", source="a") and not watch.of("gap", source="b")
    # ... the relay dropped what the composite did not take (counted in the session's status) ...
    assert all(feed["packets_dropped"] > 0 and feed["dropping"] for feed in feeds_stopped.values()), (
        feeds_stopped)
    # (Whether a feed drops again at this moment depends on the machine's load: the relay keeps only the
    # last second for a composite that lags, so a loaded one may be behind again.)
    assert all(feed["drops"] >= 1 for feed in feeds_after.values()), feeds_after
    composite_line = next(line for line in shown.splitlines() if line.strip().startswith("composite:"))
    assert "feed a: " in composite_line and "feed b: " in composite_line, shown  # edge room status
    # ... the composite's lost picture is on the ledger, over the time it was stopped ...
    dropped = [e.data for e in watch.of("gap", source="composite")
               if e.data["reason"].startswith(FEED_DROPPED_REASON)]
    closed = [d for d in dropped if d["state"] == "closed"]
    for feed in ("a", "b"):
        assert any(d["feed"] == feed and d["dropped_packets"] > 0 and d["duration_s"] >= STOPPED_S / 2
                   for d in closed), dropped
    # ... and the same composite run recorded again after SIGCONT.
    assert runs["composite"] == 1


async def test_a_killed_composite_stops_no_source_and_records_again_after_its_restart(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    recording = _recording(store, pipeline)
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: all(_sealed(watch, s) >= 2 for s in ("a", "b", "composite")), timeout_s=90)
        pid = recording.sources["composite"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = {s: _sealed(watch, s) for s in ("a", "b", "composite")}
        await watch.until(lambda: recording.sources["composite"].runs >= 2
                          and _sealed(watch, "composite") >= killed_at["composite"] + 3, timeout_s=90)
        meanwhile = {s: _sealed(watch, s) - killed_at[s] for s in ("a", "b")}
        runs = {s: recording.sources[s].runs for s in ("a", "b", "composite")}
        feeds = _feeds(recording)
    finally:
        recording.stop()
        await asyncio.wait_for(task, 90)
    assert min(meanwhile.values()) >= 3, meanwhile  # the sources recorded on through the restart
    assert runs["a"] == runs["b"] == 1 and not watch.of("gap", source="a") and not watch.of("gap", source="b")
    assert runs["composite"] >= 2
    assert watch.of("gap", source="composite", state="closed")  # its outage, closed by its next segment
    # The restarted composite reads new pipes from the same relays.
    assert all(feed["composite_attached"] and feed["bytes_relayed"] > 0 for feed in feeds.values()), feeds
