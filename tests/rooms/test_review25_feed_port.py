"""Review 25: the composite's feed must be open to no other local process.

It was a loopback UDP port (picked by binding and closing a probe socket): UDP on the loopback has no
owner check, so any local user could bind the port first and receive the interview's picture and sound,
or send datagrams the composite would record, sealed, as a derived output of the session. Now the feed
goes over pipes the agent relays (edge.rooms.feed_relay): a source's ffmpeg writes it to a pipe it
inherits, the agent reads it and writes it on to a pipe the composite's ffmpeg inherits. These tests
assert what a court would expect (only the station reads the feed; only the station's source writes
it): no process of the session holds a socket; every pipe they hold is held by them and the agent
alone; another local user cannot reach those pipes through /proc. The controls: the composite records
the sources' picture and sound through the relay; the same socket check sees the UDP feed this
replaced; and the agent's own user does reach the same descriptors, so the refusal is the other user's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.prerequisites import require
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

NOBODY = 65534
# The probe runs as that user too: the system's interpreter (a checkout's venv may be closed to others).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
# Opens each path given (O_NONBLOCK: a pipe's other end need not be there) and says what happened.
PROBE = """
import os, sys
for path, mode in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        os.close(os.open(path, (os.O_WRONLY if mode == "w" else os.O_RDONLY) | os.O_NONBLOCK))
        print("opened")
    except PermissionError:
        print("denied")
    except OSError as exc:
        print(f"error {exc.errno}")
"""


def _links(pid: int) -> dict[int, str]:
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return found


def _holders(link: str) -> set[int]:
    """Every process (this user can see) holding an end of the pipe or socket `link`."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if link in _links(int(entry)).values():
                    found.add(int(entry))
    return found


@contextlib.asynccontextmanager
async def _session(store: StationStore, pipeline: IngestPipeline) -> AsyncIterator[SessionRecording]:
    base = rooms_config(lavfi_source("a", size="320x240", rate=10, audio=True),
                        lavfi_source("b", size="160x120", rate=10))
    room = base.room[0].model_dump()
    room["composite"] = {"main": "a", "inset": "b", "size": "320x240", "rate": 10}
    config = RoomsSection.model_validate({**base.model_dump(), "room": [room]})
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                          started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        yield recording
    finally:
        recording.stop()
        await asyncio.wait_for(task, 90)


async def _recording_all(recording: SessionRecording, watch: LedgerWatch) -> dict[str, int]:
    """The pid of each ffmpeg of the session, once each has sealed segments (the feed works)."""
    await watch.until(lambda: all(len(watch.of("segment_sealed", source=s)) >= 2
                                  for s in ("a", "b", "composite")), timeout_s=90)
    pids = {s: recording.sources[s].pid for s in ("a", "b", "composite")}
    assert all(pid is not None for pid in pids.values()), pids
    return {s: pid for s, pid in pids.items() if pid is not None}


def _codecs(path: Path) -> list[str]:
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "json",
                           str(path)], capture_output=True, text=True, check=True, timeout=60)
    return sorted(s["codec_name"] for s in json.loads(done.stdout)["streams"])


async def test_no_process_of_the_session_has_a_port_and_only_the_agent_shares_their_pipes(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    async with _session(store, pipeline) as recording:
        pids = await _recording_all(recording, watch)
        links = {source: _links(pid) for source, pid in pids.items()}
        shared = {source: {link: _holders(link) for link in found.values() if link.startswith("pipe:")}
                  for source, found in links.items()}
    # No socket at all (no port to take, read or write) in any ffmpeg of the session ...
    for source, found in links.items():
        assert not [link for link in found.values() if link.startswith("socket:")], (source, found)
    # ... and each pipe they hold (the feeds, stderr, progress) is held by that ffmpeg and the agent alone.
    for source, pipes in shared.items():
        assert pipes, source
        for link, holders in pipes.items():
            assert holders <= {pids[source], os.getpid()}, (source, link, holders)
    # The control: the composite did get the sources' picture and sound (h264 and aac) through the relay.
    entry = watch.of("segment_sealed", source="composite")[-1]
    record = IngestRepository(store).item(str(entry.item))
    assert record is not None and record.path is not None
    assert _codecs(store.layout.root / record.path) == ["aac", "h264"]


async def test_control_the_socket_check_sees_a_udp_feed(tmp_path: Path) -> None:
    # What the relay replaced: an ffmpeg sending its feed to a loopback UDP port holds a socket.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
        "testsrc2=size=160x120:rate=10", "-t", "30", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316",
        stdin=asyncio.subprocess.DEVNULL)
    try:
        found: list[str] = []
        for _ in range(100):
            found = [link for link in _links(sender.pid).values() if link.startswith("socket:")]
            if found:
                break
            await asyncio.sleep(0.2)
        assert found
    finally:
        sender.kill()
        await sender.wait()


def _feed_fds(pid: int) -> list[int]:
    """The feed pipes named on an ffmpeg's command line: the composite's inputs (``-i pipe:N``), a
    source's tee output (``...]pipe:N``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    inputs = [int(arg[5:]) for before, arg in itertools.pairwise(argv)
              if before == "-i" and re.fullmatch(r"pipe:\d+", arg)]
    tee = [int(m[1]) for arg in argv if (m := re.search(r"\]pipe:(\d+)$", arg))]
    return inputs + tee


@pytest.mark.parametrize("user", ["agent", "other"])
async def test_another_local_user_cannot_reach_the_feeds_pipes(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, user: str
) -> None:
    if user == "other":
        require(os.geteuid() == 0, "acting as another local user needs root")
    async with _session(store, pipeline) as recording:
        pids = await _recording_all(recording, watch)
        # Through /proc a process that may reach a pipe's end may open the pipe either way: read the
        # source's feed (watch the interview), write the composite's (inject pictures).
        targets: list[str] = []
        for source, pid in pids.items():
            fds = _feed_fds(pid)
            assert len(fds) == (2 if source == "composite" else 1), (source, fds)
            for fd in fds:
                targets += [f"/proc/{pid}/fd/{fd}", "w" if source == "composite" else "r"]
        other = user == "other"
        probe = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-c", PROBE, *targets, stdout=asyncio.subprocess.PIPE, cwd="/",
            user=NOBODY if other else None, group=NOBODY if other else None,
            extra_groups=[] if other else None)
        out, _ = await asyncio.wait_for(probe.communicate(), 60)
    said = out.decode().split()
    assert len(said) == len(targets) // 2 == 4, said
    if user == "agent":  # the control: the descriptors are there, and the agent's own user reaches them
        assert set(said) == {"opened"}, said
    else:
        assert set(said) == {"denied"}, said
