"""`edge demo --room`: an interview-room session on simulated sources, recorder to central.

The station agent runs as in production with its GB/T 28181 platform (live Play only: downloads off), the
rooms service and the uplink to an embedded central (edge.demo's rig: HTTPS, or MQTT with
``--transport mqtt``). One room has two sources: a simulated GB/T 28181 IPC (simulators.gb28181, over
real SIP and RTP sockets, looping an H.264 recording with G.711A audio; recorded with its sound through
the channel's feed, edge.rooms.gb_feed) and an ffmpeg test source (lavfi testsrc2 with a tone). The demo
starts a session, lets it record `room_seconds`, stops it, waits until the uplink has sent everything,
verifies both stores, and reports:

* ``segments``: segment files the room's ffmpeg runs closed (sealed + any left unsealed in the capture
  directory), per source in ``sources``; ``sealed``: ``segment_sealed`` entries of the session;
* ``gaps``: the session's closed ``gap`` entries (source, from, to, reason, duration_s);
* ``max_seal_latency_s``: the largest ``seal_latency_s`` of the session's segments (ffmpeg listing the
  segment to its ``sealed`` entry);
* ``items``: every item of the session (each segment, the signed session manifest, each source's joined
  recording and the statement) with whether the central's index holds it (``received``) and whether
  the receipt the station kept verifies against the central's key for that item, hash and station
  (``receipt_verified``); ``received`` and ``receipts`` count them.

Exit status 0 only when every segment closed was sealed, every item was received with a verified receipt,
and both stores verify. ``--gb-fault stall=3`` (any simulator fault) shows a gap on the GB source.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.central.config import CentralLayout
from edge.central.sqlite.index import SqliteIndex
from edge.custody.receipt import verify_receipt
from edge.ingest.store import open_db
from edge.rooms.state import SessionFiles
from edge.station import StationAgent
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import DeviceSettings, SipTransportKind, parse_faults
from simulators.recorder.bus import RecorderBus, RecorderBusServer

if TYPE_CHECKING:
    from edge.demo import DemoOptions

ROOM_ID = "xw-demo"
GB_IPC_ID = "33010000001320000001"  # type 132: IPC
GB_IPC_CHANNEL = "33010000001310000001"  # type 131: camera channel
LIVE_FILE_S = 10.0
SESSION_FIELDS = {
    "case_number": "A3301062026000001", "collector": "张伟 110001", "subject": "询问过程",
    "persons": [{"name": "李四", "role": "被询问人"}, {"name": "张伟", "role": "询问人"}],
}


def room_section(segment_s: float) -> dict[str, Any]:
    """The station's [rooms]: one room, a GB/T 28181 IPC (close-up) and an ffmpeg test source (panorama)."""
    return {
        "segment_time_s": segment_s, "start_min_free_bytes": 0,
        "room": [{
            "id": ROOM_ID, "name": "第一询问室", "address": "杭州市西湖区文三路 100 号",
            "source": [
                {"id": "ipc", "name": "特写 (GB/T 28181 IPC)",
                 "gb28181": {"device_id": GB_IPC_ID, "channel_id": GB_IPC_CHANNEL}},
                {"id": "pano", "name": "全景 (ffmpeg testsrc2)", "codec": "encode", "input": [
                    {"format": "lavfi", "url": "testsrc2=size=640x360:rate=25", "realtime": True},
                    {"format": "lavfi", "url": "sine=frequency=440:sample_rate=48000", "realtime": True}]},
            ],
        }],
    }


def gb_live_section(password_file: Path, socket_dir: Path, platform_id: str) -> dict[str, Any]:
    """The station's [gb28181]: the platform on a free loopback port, the IPC allowed, live Play only."""
    return {
        "enabled": True, "sip_id": platform_id, "domain": platform_id[:10], "listen_host": "127.0.0.1",
        "listen_port": 0,
        "devices": {GB_IPC_ID: {"password": f"file:{password_file}", "name": "询问室特写摄像机"}},
        "download": {"enabled": False, "media_host": "127.0.0.1"},
        "live": {"socket_dir": str(socket_dir), "media_transport": "tcp-passive", "retry_min_s": 0.5,
                 "retry_max_s": 2.0},
    }


def session_report(store_dir: Path, session_id: str, central_store: Path | None, central_key: Any,
                   station_id: str) -> dict[str, Any]:
    """What the session left: its segments, gaps, seal latencies, and each item's central receipt."""
    conn = open_db(store_dir / "state.db")
    try:
        rows = conn.execute("SELECT seq, type, item, data FROM ledger WHERE type IN ('segment_sealed', "
                            "'gap', 'session_stopped', 'room_products') ORDER BY seq").fetchall()
        uploads = {str(item): (str(state), receipt) for item, state, receipt in
                   conn.execute("SELECT item, state, receipt FROM uploads").fetchall()}
        hashes = {str(item): str(sha) for item, sha in conn.execute("SELECT item, sha256 FROM items")}
    finally:
        conn.close()
    segments: list[dict[str, Any]] = []
    gaps: list[dict[str, Any]] = []
    manifest_item: str | None = None
    products: list[tuple[str, str, str | None]] = []  # (item, role, source): joined files, the statement
    for _, type_, item, text in rows:
        data = json.loads(text)
        if data.get("room_session") != session_id:
            continue
        if type_ == "segment_sealed":
            segments.append({"item": item, "source": data.get("source"), "index": data.get("index"),
                             "sha256": data.get("sha256"), "seal_latency_s": data.get("seal_latency_s"),
                             "partial": data.get("partial")})
        elif type_ == "gap" and data.get("state") == "closed":
            gaps.append({key: data.get(key) for key in ("source", "from", "to", "reason", "duration_s")})
        elif type_ == "session_stopped":
            manifest_item = data.get("manifest_item")
        elif type_ == "room_products":
            products = [(str(j["item"]), "joined-recording", str(j.get("source")))
                        for j in data.get("joined", []) if j.get("item")]
            if data.get("statement_item"):
                products.append((str(data["statement_item"]), "session-statement", None))
    index = SqliteIndex.open(CentralLayout(central_store).index_db) if central_store is not None else None
    items = []
    try:
        wanted = [(s["item"], "segment", s["source"]) for s in segments]
        if manifest_item:
            wanted.append((manifest_item, "session-manifest", None))
        wanted += products
        for item, role, source in wanted:
            state, receipt = uploads.get(item, ("not queued", None))
            received = index is not None and index.item(item) is not None
            verified = False
            if receipt and central_key is not None:
                verified = not verify_receipt(json.loads(receipt), central_key, expected_item=item,
                                              expected_sha256=hashes.get(item),
                                              expected_station=station_id)
            items.append({"item": item, "role": role, "source": source, "sha256": hashes.get(item),
                          "upload": state, "received": received, "receipt_verified": verified})
    finally:
        if index is not None:
            index.close()
    latencies = [float(s["seal_latency_s"]) for s in segments if s["seal_latency_s"] is not None]
    return {"segments_sealed": segments, "gaps": gaps, "items": items, "manifest_item": manifest_item,
            "max_seal_latency_s": round(max(latencies), 3) if latencies else None}


async def run_room_demo(options: DemoOptions, workdir: Path, out: Any, run_dir: Path) -> int:
    """See the module docstring."""
    from edge.demo import (
        DEMO_PASSWORD,
        GB_PLATFORM_ID,
        GB_UTC_OFFSET_MIN,
        SESSION_TIMEOUT_S,
        STATION_ID,
        _print_urls,
        _start_central,
        _stop_services,
        demo_config,
        started_in_own_process,
        verify_demo,
    )

    for sub in ("sim", "media"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    password_file = workdir / "recorder-password"
    password_file.write_text(DEMO_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    print(f"evidence-edge interview-room demo in {workdir}", file=out, flush=True)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    media_dir = workdir / "gb-media" / GB_IPC_ID
    if not any(media_dir.glob("*.mp4")):
        device_now = (datetime.now(UTC) + timedelta(minutes=GB_UTC_OFFSET_MIN)).replace(tzinfo=None,
                                                                                      microsecond=0)
        await loop.run_in_executor(None, functools.partial(
            generate_recordings, media_dir, 1, start=device_now - timedelta(minutes=30), seconds=LIVE_FILE_S,
            size="640x360", rate=25, audio=True))
    # The USB side runs as on every station, with no recorder on its bus.
    bus = RecorderBus(workdir / "sim" / "state", workdir / "media")
    server = RecorderBusServer(bus, workdir / "sim" / "bus.sock")
    server.start()
    central, broker, uplink, station_mqtt = await _start_central(options, workdir, out)
    api = {"socket_path": str(run_dir / "station.sock"), "tcp_port": 0}
    config = demo_config(workdir, [], "", password_file, uplink, api, station_mqtt,
                         gb28181=gb_live_section(password_file, run_dir / "live", GB_PLATFORM_ID),
                         rooms=room_section(options.segment_s))
    stop = asyncio.Event()
    agent = StationAgent(config)
    runner = asyncio.create_task(agent.run(stop))
    device_task: asyncio.Future[None] | None = None
    device: SimulatedDevice | None = None
    drained = True
    summary: dict[str, Any] = {}
    session_id = ""
    errors: list[str] = []
    try:
        await asyncio.wait_for(agent.ready.wait(), 30)
        started_in_own_process(options)
        _print_urls(out, agent)
        platform, rooms = agent.gb28181, agent.rooms
        if platform is None or rooms is None or agent.gb28181_live is None:
            raise RuntimeError("the station did not start its GB/T 28181 platform, live streams or rooms "
                               "(see the log)")
        await asyncio.wait_for(platform.started.wait(), 30)
        device = SimulatedDevice(DeviceSettings(
            platform_host="127.0.0.1", platform_port=platform.transport.port, platform_id=GB_PLATFORM_ID,
            device_id=GB_IPC_ID, password=DEMO_PASSWORD, media_dir=media_dir, keepalive_interval_s=30.0,
            device_name="询问室特写摄像机", transport=SipTransportKind.UDP,
            faults=parse_faults(list(options.gb_faults))))
        device_task = asyncio.ensure_future(device.run())
        async with asyncio.timeout(30):
            while (state := platform.registry.get(GB_IPC_ID)) is None or not state.online:
                await asyncio.sleep(0.05)
        print(f"GB/T 28181 IPC {GB_IPC_ID} registered to the platform on 127.0.0.1:{platform.transport.port}",
              file=out, flush=True)
        session = await rooms.start(ROOM_ID, SESSION_FIELDS, by="demo")
        session_id = session.session
        print(f"room {ROOM_ID}: session {session_id} recording (case {session.case_number}) for "
              f"{options.room_seconds:g} s: sources ipc (GB/T 28181 live) and pano (ffmpeg testsrc2)",
              file=out, flush=True)
        await asyncio.sleep(options.room_seconds)
        summary = await rooms.stop(ROOM_ID, by="demo")
        print(f"room {ROOM_ID}: stopped: {summary['segments']} segment(s), {summary['gaps']} gap(s), "
              f"manifest {summary['manifest_item']}", file=out, flush=True)
        if agent.uplink is not None:
            drained = await agent.uplink.wait_drained(SESSION_TIMEOUT_S)
    finally:
        if device is not None:
            with contextlib.suppress(Exception):
                await device.close()
        if device_task is not None:
            device_task.cancel()
            await asyncio.gather(device_task, return_exceptions=True)
        stop.set()
        try:
            await runner
        finally:
            server.stop()
            bus.close()
            await _stop_services(central, broker)
    checked = await verify_demo(loop, config, central, drained=drained)
    report, central_report = checked.station, checked.central
    errors += checked.errors()
    store_dir = config.station.store_dir
    facts = await loop.run_in_executor(None, lambda: session_report(
        store_dir, session_id, central.store_dir if central is not None else None,
        central.signing_public_key() if central is not None else None, STATION_ID))
    capture = SessionFiles(store_dir).capture_dir / session_id
    unsealed = sorted(p.name for p in capture.rglob("seg-*.mp4")) if session_id and capture.is_dir() else []
    sealed = facts["segments_sealed"]
    sources: dict[str, dict[str, int]] = {}
    for segment in sealed:
        counts = sources.setdefault(str(segment["source"]), {"sealed": 0, "partial": 0})
        counts["sealed"] += 1
        counts["partial"] += 1 if segment["partial"] else 0
    for name in ("ipc", "pano"):
        if not sources.get(name, {}).get("sealed"):
            errors.append(f"source {name}: no segment sealed")
    if unsealed:
        errors.append(f"{len(unsealed)} segment file(s) left unsealed: {', '.join(unsealed[:5])}")
    items = facts["items"]
    if central is not None:
        for item in items:
            if not (item["received"] and item["receipt_verified"]):
                errors.append(f"item {item['item']} ({item['role']}): received {item['received']}, receipt "
                              f"verified {item['receipt_verified']} (upload {item['upload']})")
    result = {
        "room": ROOM_ID,
        "session": session_id,
        "seconds_recorded": options.room_seconds,
        "segment_time_s": options.segment_s,
        "segments": len(sealed) + len(unsealed),
        "sealed": len(sealed),
        "sources": sources,
        "gaps": facts["gaps"],
        "max_seal_latency_s": facts["max_seal_latency_s"],
        "manifest_item": facts["manifest_item"],
        "items": items,
        "received": sum(1 for i in items if i["received"]),
        "receipts": sum(1 for i in items if i["receipt_verified"]),
        "store": str(store_dir),
        "store_verified": report.ok,
        "central_store": str(central.store_dir) if central is not None else None,
        "central_verified": None if central_report is None else not central_report,
        "transport": options.transport if central is not None else None,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
    }
    print("", file=out)
    for name, counts in sorted(sources.items()):
        print(f"source {name:<5} sealed {counts['sealed']:>3} (partial {counts['partial']})", file=out)
    for gap in facts["gaps"]:
        print(f"gap {gap['source']}: {gap['from']} → {gap['to']} ({gap['duration_s']} s): {gap['reason']}",
              file=out)
    print(f"segments {result['segments']}, sealed {result['sealed']}, gaps {len(facts['gaps'])}, max seal "
          f"latency {result['max_seal_latency_s']} s; items received centrally {result['received']} of "
          f"{len(items)}, receipts verified {result['receipts']}; store verification "
          f"{'OK' if report.ok else 'FAILED'}", file=out, flush=True)
    if options.json_output:
        print(json.dumps(result, ensure_ascii=False), file=out, flush=True)
    return 0 if not errors else 1
