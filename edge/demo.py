"""`edge demo`: the whole journey on simulated hardware, recorder → station → central.

Starts the recorder bus simulator (pyusb backend over a UNIX socket, volumes under a mount root), the
bay controller simulator (a real pty) and an embedded central receiver (its own store under the
workdir, its own CA; the station is enrolled and talks to it over mutual TLS), runs the real station
agent against them, docks every recorder and follows each item through offload → upload → receipt.
Recorders are erased only once the central's receipt for each file verified (wipe policy
after-receipt: stricter than the stations' default after-witness, and it shows receipts); without the
central the demo erases after verification (after-verify, which nobody witnesses: see the README's wipe
policies). At the end both stores are verified and a summary is printed.

With ``--source gb28181`` the recorders are 4G body-worn recorders speaking GB/T 28181 instead
(simulators.gb28181, real SIP and RTP sockets): they register to the station's platform, which lists and
downloads their recordings (raw PS + MP4 each, sealed) and uploads them; same summary keys
(`_run_gb28181`).

With ``--room`` it is an interview-room session instead: a simulated GB/T 28181 IPC and an ffmpeg test
source record for ``--seconds``, the session is stopped, and every segment and the session manifest are
followed to the central's receipt (edge.demo_room).

With ``--shift`` it is a shift of issue and return (领用/归还) instead: officers check recorders out with
cards at the station's reader, record, dock them again (check-in), and every item's manifest says who held
the recorder by the station's assignments (edge.demo_shift).

With ``--transport mqtt`` the station has no HTTPS path to the central at all: it registers, pushes its
ledger and sends evidence through an MQTT broker (EMQX-style file transfer, README "MQTT"). Unless
``--broker URL`` names one, the demo runs a local Mosquitto (edge.mqtt.local_broker) on a free port with
the shipped agency configuration and ACL, its server certificate and the central's own broker identity
issued by the demo central's CA, as `edge central broker-cert` and `edge central mqtt-identity` do.

With ``--central-process`` the central is not embedded in the demo's process but runs as deployed,
`edge central run` in a process of its own (edge.central.own_process), on the same kind of set-up; the
summary then tells the two sides' CPU apart: ``station_cpu_s`` (the demo's process) and
``central_cpu_s`` (the central's), each from the first docking to the last receipt.

On a terminal each bay shows a live progress bar (rich) and the summary is a table; otherwise (a log, a
pipe) one plain line per change that matters. The station's local API runs as in production: its socket
and the dock screen's URL are printed, and with ``--keep-running`` the station, its API and the central
stay up after the journey until Ctrl-C, for a person to look.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edge.central.embedded import EmbeddedCentral, issue_mqtt_identities
from edge.central.own_process import CentralProcess
from edge.central.verify import verify_central_store
from edge.config.station import StationConfig
from edge.custody.problems import Problem
from edge.ingest.store import open_db
from edge.mqtt.local_broker import BrokerTls, LocalBroker, free_port
from edge.observe.live import LiveBays
from edge.runtime.collector import freeze_start_up_objects
from edge.station import StationAgent
from edge.verify.station import VerifyReport, verify_store
from simulators.dock import DockSimulator
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.media import generate_recordings
from simulators.gb28181.settings import DeviceSettings, SipTransportKind, parse_faults
from simulators.recorder.bus import RecorderBus, RecorderBusServer, RecorderSpec

OFFICERS = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇", "周婷", "吴强"]
USB_DEMO_RECORDERS = 3  # bays of a small docking station
GB_DEMO_RECORDERS = 2  # 4G recorders of the GB/T 28181 demo (the issue's "two simulated 4G recorders")
MAX_DEMO_RECORDERS = 64


def demo_recorders(asked: int | None, source: str) -> int | None:
    """How many simulated recorders a demo runs: `asked` (None: the source's default), or None when `asked`
    is out of 1..MAX_DEMO_RECORDERS."""
    if asked is None:
        return GB_DEMO_RECORDERS if source == "gb28181" else USB_DEMO_RECORDERS
    return asked if 1 <= asked <= MAX_DEMO_RECORDERS else None


DEMO_PASSWORD = "000000"  # the factory default real recorders ship with; a demo has nothing to hide
SESSION_TIMEOUT_S = 600.0
STATION_ID = "DEMO-STATION-01"
# GB/T 28181: the station's platform id (type 200, SIP server) and the demo devices' (type 132, IPC).
GB_PLATFORM_ID = "33010000002000000001"
GB_DEVICE_PREFIX = "3301000000132"
GB_TRANSPORTS = ("tcp-passive", "udp")
GB_RECORDING_S = 4.0
GB_UTC_OFFSET_MIN = 480  # the devices' clocks: Beijing time (the [gb28181] default)


@dataclass(frozen=True)
class DemoOptions:
    recorders: int = USB_DEMO_RECORDERS
    files: int = 5
    file_mb: float = 2.0
    workdir: Path | None = None
    json_output: bool = False
    central: bool = True  # False: offload only (the pipeline benchmark's baseline)
    keep_running: bool = False  # after the journey, keep the station and its API up until Ctrl-C
    transport: str = "http"  # how the station reaches the central: "http" (tus, HTTPS) or "mqtt" (a broker)
    broker_url: str | None = None  # with transport "mqtt": this broker instead of a local Mosquitto
    source: str = "usb"  # "usb": recorders docked in bays; "gb28181": 4G recorders over GB/T 28181
    gb_faults: tuple[str, ...] = ()  # gb28181: faults of every simulated device (simulators --fault NAME)
    room: bool = False  # an interview-room session instead (edge.demo_room)
    room_seconds: float = 30.0  # room: how long the session records
    segment_s: float = 5.0  # room: segment length
    shift: bool = False  # a shift of issue and return at the desk instead (edge.demo_shift)
    central_process: bool = False  # the central as `edge central run` in its own process, not embedded
    own_process: bool = False  # the demo is its process (`edge demo`): start-up objects frozen once ready
    # Each docked recorder's reads paced to this many MB/s (10^6 bytes), as recorders on USB 2.0 deliver
    # (30 to 40 MB/s a bay); None: as fast as this machine reads the simulated volumes.
    usb_mb_s: float | None = None


class DemoCentral(Protocol):
    """What the demo needs of its central, embedded or in a process of its own."""

    @property
    def url(self) -> str: ...

    @property
    def console_url(self) -> str: ...

    @property
    def store_dir(self) -> Path: ...

    def uplink_config(self) -> dict[str, Any]: ...

    def signing_public_key(self) -> Ed25519PublicKey: ...

    async def stop(self) -> None: ...


def own_cpu_s() -> float:
    """User + system CPU seconds of this process (every thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recorder_specs(
    count: int, files: int, file_mb: float, usb_mb_s: float | None = None
) -> list[RecorderSpec]:
    rate = None if usb_mb_s is None else max(1, round(usb_mb_s * 1_000_000))
    specs = []
    for i in range(count):
        specs.append(
            RecorderSpec(
                device_serial=f"{3300001 + i}",
                usb_serial=f"EEZ01{i + 1:011d}",
                officer_no=f"{110001 + i}",
                officer_name=OFFICERS[i % len(OFFICERS)],
                unit_code="330100000000",
                unit_name="杭州市综合行政执法局",
                files=files,
                file_mb=file_mb,
                seed=i,
                # Recorders come back from a shift with clocks that wandered: the station measures them
                # and sets them (校时).
                clock_offset_s=[-95.0, 3.5, 0.2, 42.0][i % 4],
                clock_drift_ppm=20.0,
                battery_percent=30 + (17 * i) % 60,
                rate_limit_bytes_per_s=rate,
            )
        )
    return specs


def demo_config(
    workdir: Path,
    specs: list[RecorderSpec],
    dock_port: str,
    password_file: Path,
    uplink: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    gb28181: dict[str, Any] | None = None,
    rooms: dict[str, Any] | None = None,
    equipment: dict[str, Any] | None = None,
) -> StationConfig:
    return StationConfig.model_validate(
        {
            "station": {
                "id": STATION_ID,
                "name": "Demo docking station",
                "unit_code": "330100000000",
                "unit_name": "杭州市综合行政执法局",
                "store_dir": str(workdir / "station-store"),
                # This machine's clock stands in for an NTP/BeiDou-disciplined one, so 校时 is shown.
                "clock": "trusted",
            },
            "usb": {
                "backend": "simulator",
                "simulator_socket": str(workdir / "sim" / "bus.sock"),
                "poll_interval_s": 0.2,
                "mount_root": str(workdir / "media"),
                "volume_timeout_s": 60,
            },
            "dock": {"port": dock_port},
            "bays": [{"number": i + 1, "usb_port": f"1-1.{i + 1}"} for i in range(len(specs))],
            "recorders": {
                "default_password": f"file:{password_file}",
                "allow": [{"device_serial": s.device_serial, "usb_serial": s.usb_serial} for s in specs],
            },
            "offload": {"concurrency": min(8, max(1, len(specs))), "min_free_bytes": 64 << 20},
            "wipe": {"policy": "after-receipt" if uplink else "after-verify", "receipt_wait_s": 600},
            "uplink": uplink or {},
            "mqtt": mqtt or {},
            "api": api or {"enabled": False},
            "gb28181": gb28181 or {},
            "rooms": rooms or {},
            "equipment": equipment or {},
            "case_defaults": {
                "location": "杭州市西湖区文三路",
                "subject": "现场执法过程",
                "category": "现场检查",
            },
        }
    )


def uplink_summary(store_dir: Path) -> dict[str, int]:
    """Items whose content reached the central, and items whose receipt verified at the station."""
    conn = open_db(store_dir / "state.db")
    try:
        uploaded = conn.execute("SELECT count(DISTINCT item) FROM ledger WHERE type='uploaded'").fetchone()[0]
        receipts = conn.execute("SELECT count(*) FROM uploads WHERE state='receipted'").fetchone()[0]
    finally:
        conn.close()
    return {"uploaded": int(uploaded), "receipts": int(receipts)}


def evidence_left(bus: RecorderBus, device_serial: str, config: StationConfig) -> int:
    """Evidence files still on a recorder (PARAM.INI and other non-evidence files do not count)."""
    wanted = set(config.offload.extensions)
    return sum(1 for name in bus.volume_files(device_serial) if name.rpartition(".")[2].lower() in wanted)


async def run_demo(options: DemoOptions) -> int:
    keep = options.workdir is not None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="evidence-edge-demo-"))
    workdir = workdir.resolve()
    out = sys.stdout
    # A Unix socket's path holds 107 bytes: the API's socket gets a short directory of its own.
    run_dir = Path(tempfile.mkdtemp(prefix="edge-demo-", dir="/tmp"))
    try:
        if options.shift:
            from edge.demo_shift import run_shift_demo

            return await run_shift_demo(options, workdir, out, run_dir)
        if options.room:
            from edge.demo_room import run_room_demo

            return await run_room_demo(options, workdir, out, run_dir)
        if options.source == "gb28181":
            return await _run_gb28181(options, workdir, out, run_dir)
        return await _run(options, workdir, out, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(options: DemoOptions, workdir: Path, out: Any, run_dir: Path) -> int:
    for sub in ("sim", "media"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    password_file = workdir / "recorder-password"
    password_file.write_text(DEMO_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    specs = recorder_specs(options.recorders, options.files, options.file_mb, options.usb_mb_s)
    print(f"evidence-edge demo in {workdir}", file=out)
    paced = f", each read at {options.usb_mb_s:g} MB/s" if options.usb_mb_s is not None else ""
    print(
        f"making {len(specs)} simulated recorders with {options.files} files each "
        f"(video {options.file_mb:g} MiB{paced}) ...",
        file=out,
        flush=True,
    )
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    bus = RecorderBus(workdir / "sim" / "state", workdir / "media")
    for spec in specs:
        if not bus.has_recorder(spec.device_serial):
            await loop.run_in_executor(None, bus.add_recorder, spec)
    server = RecorderBusServer(bus, workdir / "sim" / "bus.sock")
    dock = DockSimulator(bays=max(8, len(specs)), seed=1)
    server.start()
    dock.start()
    central, broker, uplink, station_mqtt = await _start_central(options, workdir, out)
    # The station's local API as in production (its own socket; the dock screen on a free loopback port).
    api = {"socket_path": str(run_dir / "station.sock"), "tcp_port": 0}
    config = demo_config(workdir, specs, dock.tty_path, password_file, uplink, api, station_mqtt)
    stop = asyncio.Event()
    agent = StationAgent(config)
    runner = asyncio.create_task(agent.run(stop))
    drained = True
    try:
        await asyncio.wait_for(agent.ready.wait(), 30)
        started_in_own_process(options)
        _print_urls(out, agent)
        async with LiveBays(agent.status, out) as live:
            offload_started = time.monotonic()
            cpu_started = _cpu_now(central)
            for i, spec in enumerate(specs):
                live.print(
                    f"docking recorder {spec.device_serial} ({spec.officer_name}, 警号 {spec.officer_no}) "
                    f"in bay {i + 1}"
                )
                dock.insert(i + 1, charge_percent=spec.battery_percent)
                bus.plug(spec.device_serial, f"1-1.{i + 1}")
            deadline = loop.time() + SESSION_TIMEOUT_S
            while len(agent.results) < len(specs) and loop.time() < deadline and not runner.done():
                await asyncio.sleep(0.1)
            await agent.idle()
            offload_s = time.monotonic() - offload_started
            if agent.uplink is not None:
                drained = await agent.uplink.wait_drained(SESSION_TIMEOUT_S)
            journey_s = time.monotonic() - offload_started
            cpu_used = [now - before for now, before in zip(_cpu_now(central), cpu_started, strict=True)]
        leds = {i + 1: str(dock.led(i + 1)) for i in range(len(specs))}
        remaining = {s.device_serial: evidence_left(bus, s.device_serial, config) for s in specs}
        if options.keep_running:
            await _keep_running(out, agent)
    finally:
        stop.set()
        try:
            await runner
        finally:
            for spec in specs:
                with contextlib.suppress(Exception):
                    bus.unplug(spec.device_serial)
            server.stop()
            dock.stop()
            bus.close()
            await _stop_services(central, broker)
    checked = await verify_demo(loop, config, central, drained=drained)
    report = checked.station
    results = agent.results
    errors = [e for r in results for e in r.errors] + checked.errors()
    if len(results) < len(specs):
        errors.append(f"only {len(results)} of {len(specs)} recorders finished")
    uplink_counts = uplink_summary(config.station.store_dir)
    central_report = checked.central
    summary = {
        "recorders": len(specs),
        "items": sum(len(r.items) for r in results),
        "bytes": sum(r.bytes for r in results),
        "verified": sum(r.verified for r in results),
        "wiped": sum(r.wiped for r in results),
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
        "usb_mb_s": options.usb_mb_s,
        "offload_seconds": round(offload_s, 2),
        # Docking to the last receipt (equal to offload_seconds without a central).
        "journey_seconds": round(journey_s, 2),
        "store": str(config.station.store_dir),
        "store_verified": report.ok,
        "left_on_recorders": sum(remaining.values()),
        "uploaded": uplink_counts["uploaded"],
        "receipts": uplink_counts["receipts"],
        "central_store": str(central.store_dir) if central is not None else None,
        "central_verified": None if central_report is None else not central_report,
        "transport": options.transport if central is not None else None,
        "broker_url": station_mqtt["broker_url"] if station_mqtt is not None else None,
        "central_process": isinstance(central, CentralProcess),
        # CPU seconds from the first docking to the last receipt: this process (the station, with the
        # simulators and an embedded central), and a central in its own process (else null).
        "station_cpu_s": round(cpu_used[0], 3),
        "central_cpu_s": round(cpu_used[1], 3) if len(cpu_used) > 1 else None,
    }
    _print_table(out, agent, specs, leds, remaining, report.ok)
    if central is not None:
        print(
            f"uploaded {uplink_counts['uploaded']}, receipts verified {uplink_counts['receipts']}, "
            f"central store verification: {'OK' if not central_report else 'FAILED'}",
            file=out,
            flush=True,
        )
    if options.json_output:
        print(json.dumps(summary, ensure_ascii=False), file=out, flush=True)
    return 0 if not errors else 1


def _gb_section(workdir: Path, password_file: Path, devices: list[str]) -> dict[str, Any]:
    """The station's [gb28181]: the platform on a free loopback port, the demo devices allowed (the first
    sends media over TCP to the station, the next over UDP, and so on), downloads on registration."""
    return {
        "enabled": True, "sip_id": GB_PLATFORM_ID, "domain": GB_PLATFORM_ID[:10], "listen_host": "127.0.0.1",
        "listen_port": 0,
        "devices": {device: {"password": f"file:{password_file}", "name": f"4G 执法记录仪 {i + 1}",
                             "media_transport": GB_TRANSPORTS[i % len(GB_TRANSPORTS)]}
                    for i, device in enumerate(devices)},
        "download": {"media_host": "127.0.0.1", "idle_timeout_s": 5, "speed": 4},
    }


def gb_summary(store_dir: Path) -> dict[str, int]:
    """Sealed GB/T 28181 items (raw PS and MP4) and their bytes, split by whether the download they came
    from was complete (its raw PS manifest's `complete`; an MP4 goes with the raw PS it was made from, the
    same attempt), and the recordings with a complete download and those with incomplete ones only."""
    conn = open_db(store_dir / "state.db")
    try:
        rows = conn.execute(
            "SELECT a.original, a.version, i.size, i.manifest FROM acquisitions a JOIN items i USING (item) "
            "WHERE a.source='gb28181' AND a.state='sealed'").fetchall()
    finally:
        conn.close()
    complete_attempts: dict[tuple[str, str], bool] = {}
    for original, version, _, manifest in rows:
        role, _, attempt = str(version).partition("#")
        if role == "raw-ps":
            facts = (json.loads(manifest) if manifest else {}).get("original", {})
            complete_attempts[(original, attempt)] = facts.get("complete") is not False
    items = {True: 0, False: 0}
    for original, version, _, _ in rows:
        attempt = str(version).partition("#")[2]
        items[complete_attempts.get((original, attempt), False)] += 1
    recordings = {original for original, _ in complete_attempts}
    whole = {original for (original, _), complete in complete_attempts.items() if complete}
    return {"items": len(rows), "bytes": sum(int(size) for _, _, size, _ in rows),
            "complete_items": items[True], "incomplete_items": items[False],
            "recordings": len(whole), "recordings_incomplete": len(recordings - whole)}


async def _run_gb28181(options: DemoOptions, workdir: Path, out: Any, run_dir: Path) -> int:
    """`edge demo --source gb28181`: `options.recorders` simulated 4G recorders (simulators.gb28181, over
    real sockets) with `options.files` recordings each register to the station's GB/T 28181 platform; the
    station lists and downloads every recording (raw PS + MP4, sealed), uploads them to the central, and
    both stores are verified. The summary has the USB demo's keys (`wiped` and `left_on_recorders` count
    recordings: GB/T 28181 devices are never erased, and what was not downloaded whole is left) and says
    how many recordings and items came complete and incomplete (`gb_summary`); a recording that came
    incomplete is sealed as it came but is an error: exit 1."""
    for sub in ("sim", "media"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    password_file = workdir / "recorder-password"
    password_file.write_text(DEMO_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    devices = [f"{GB_DEVICE_PREFIX}{i + 1:07d}" for i in range(options.recorders)]
    print(f"evidence-edge GB/T 28181 demo in {workdir}", file=out)
    print(f"making {len(devices)} simulated 4G recorders with {options.files} recordings each "
          f"({GB_RECORDING_S:g} s, about {options.file_mb:g} MiB) ...", file=out, flush=True)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    device_now = (datetime.now(UTC) + timedelta(minutes=GB_UTC_OFFSET_MIN)).replace(tzinfo=None,
                                                                                  microsecond=0)
    bitrate = f"{max(100, int(options.file_mb * 8 * 1024 * 1024 / GB_RECORDING_S / 1000))}k"
    media_dirs = {}
    for index, device in enumerate(devices):
        media_dir = workdir / "gb-media" / device
        if not any(media_dir.glob("*.mp4")):
            make = functools.partial(
                generate_recordings, media_dir, options.files,
                start=device_now - timedelta(hours=2, minutes=index), seconds=GB_RECORDING_S,
                size="640x360", rate=25, spacing=timedelta(minutes=10), video_bitrate=bitrate)
            await loop.run_in_executor(None, make)
        media_dirs[device] = media_dir
    recordings_total = sum(len(list(d.glob("*.mp4"))) for d in media_dirs.values())
    # The USB side runs as on every station, with no recorder on its bus and no dock board.
    bus = RecorderBus(workdir / "sim" / "state", workdir / "media")
    server = RecorderBusServer(bus, workdir / "sim" / "bus.sock")
    server.start()
    central, broker, uplink, station_mqtt = await _start_central(options, workdir, out)
    api = {"socket_path": str(run_dir / "station.sock"), "tcp_port": 0}
    config = demo_config(workdir, [], "", password_file, uplink, api, station_mqtt,
                         gb28181=_gb_section(workdir, password_file, devices))
    stop = asyncio.Event()
    agent = StationAgent(config)
    runner = asyncio.create_task(agent.run(stop))
    simulated: list[SimulatedDevice] = []
    device_tasks: list[asyncio.Task[None]] = []
    drained = True
    progress: dict[str, Any] = {}
    try:
        await asyncio.wait_for(agent.ready.wait(), 30)
        started_in_own_process(options)
        _print_urls(out, agent)
        platform, scheduler = agent.gb28181, agent.gb28181_downloads
        if platform is None or scheduler is None:
            raise RuntimeError("the station did not start its GB/T 28181 platform (see the log)")
        await asyncio.wait_for(platform.started.wait(), 30)
        print(f"GB/T 28181 platform {GB_PLATFORM_ID} on 127.0.0.1:{platform.transport.port} (SIP over UDP "
              "and TCP)", file=out, flush=True)
        download_started = time.monotonic()
        for index, device in enumerate(devices):
            settings = DeviceSettings(
                platform_host="127.0.0.1", platform_port=platform.transport.port, platform_id=GB_PLATFORM_ID,
                device_id=device, password=DEMO_PASSWORD, media_dir=media_dirs[device],
                keepalive_interval_s=30.0, device_name=f"4G recorder {index + 1}",
                transport=SipTransportKind.TCP if index % 2 else SipTransportKind.UDP,
                faults=parse_faults(list(options.gb_faults)))
            simulated.append(SimulatedDevice(settings))
            device_tasks.append(asyncio.ensure_future(simulated[-1].run()))
            print(f"4G recorder {device} registers (SIP over {settings.transport.value}, media over "
                  f"{GB_TRANSPORTS[index % len(GB_TRANSPORTS)]})", file=out, flush=True)

        def all_listed_and_idle() -> bool:
            views = scheduler.snapshot()
            return all(d in views and views[d]["last_pass_at"] and views[d]["state"] == "idle"
                       and views[d]["listed"] >= len(list(media_dirs[d].glob("*.mp4"))) for d in devices)

        async with asyncio.timeout(SESSION_TIMEOUT_S):
            async with scheduler.pass_ended:
                await scheduler.pass_ended.wait_for(all_listed_and_idle)
        offload_s = time.monotonic() - download_started
        progress = scheduler.snapshot()
        if agent.uplink is not None:
            drained = await agent.uplink.wait_drained(SESSION_TIMEOUT_S)
        journey_s = time.monotonic() - download_started
        if options.keep_running:
            await _keep_running(out, agent)
    finally:
        for device_sim in simulated:
            with contextlib.suppress(Exception):
                await device_sim.close()
        for task in device_tasks:
            task.cancel()
        await asyncio.gather(*device_tasks, return_exceptions=True)
        stop.set()
        try:
            await runner
        finally:
            server.stop()
            bus.close()
            await _stop_services(central, broker)
    checked = await verify_demo(loop, config, central, drained=drained)
    report, central_report = checked.station, checked.central
    errors = checked.errors()
    for device in devices:
        view = progress.get(device, {})
        if view.get("failed"):
            errors.append(f"device {device}: {view['failed']} recording(s) not downloaded "
                          f"({view.get('last_problem') or 'see the ledger'})")
    counts = gb_summary(config.station.store_dir)
    if counts["recordings_incomplete"]:
        # What came is sealed (evidence of what came), but the recording is not whole: not a success.
        errors.append(f"{counts['recordings_incomplete']} recording(s) came incomplete "
                      f"({counts['incomplete_items']} item(s) sealed as incomplete; see the ledger)")
    if counts["recordings"] < recordings_total:
        errors.append(f"only {counts['recordings']} of {recordings_total} recordings were downloaded whole")
    uplink_counts = uplink_summary(config.station.store_dir)
    summary = {
        "recorders": len(devices),
        "items": counts["items"],
        "bytes": counts["bytes"],
        "verified": counts["items"],  # an item is sealed only after its stored copy was re-read and matched
        "wiped": 0,  # GB/T 28181 recordings stay on their device
        "errors": errors,
        "seconds": round(time.monotonic() - started, 2),
        # Registration to the last recording sealed (the USB demo's docking to the last file verified).
        "offload_seconds": round(offload_s, 2),
        "journey_seconds": round(journey_s, 2),
        "store": str(config.station.store_dir),
        "store_verified": report.ok,
        "left_on_recorders": recordings_total - counts["recordings"],
        "uploaded": uplink_counts["uploaded"],
        "receipts": uplink_counts["receipts"],
        "central_store": str(central.store_dir) if central is not None else None,
        "central_verified": None if central_report is None else not central_report,
        "transport": options.transport if central is not None else None,
        "broker_url": station_mqtt["broker_url"] if station_mqtt is not None else None,
        "source": "gb28181",
        "recordings": recordings_total,
        # Recordings downloaded whole, and those with incomplete downloads only (sealed as they came).
        "recordings_complete": counts["recordings"],
        "recordings_incomplete": counts["recordings_incomplete"],
        "complete_items": counts["complete_items"],
        "incomplete_items": counts["incomplete_items"],
        "downloads": progress,
    }
    print("", file=out)
    print(f"{'device':<20}  {'media':<11} {'listed':>6} {'done':>4} {'sealed':>6} {'failed':>6} "
          f"{'incomplete':>10}", file=out)
    for index, device in enumerate(devices):
        view = progress.get(device, {})
        print(f"{device:<20}  {GB_TRANSPORTS[index % len(GB_TRANSPORTS)]:<11} {view.get('listed', 0):>6} "
              f"{view.get('done', 0):>4} {view.get('skipped', 0):>6} {view.get('failed', 0):>6} "
              f"{view.get('incomplete', 0):>10}", file=out)
    print(f"recordings downloaded whole {counts['recordings']} of {recordings_total}, incomplete "
          f"{counts['recordings_incomplete']} (items: {counts['complete_items']} complete, "
          f"{counts['incomplete_items']} incomplete)", file=out)
    print(f"store verification: {'OK' if report.ok else 'FAILED'}", file=out, flush=True)
    if central is not None:
        print(f"uploaded {uplink_counts['uploaded']}, receipts verified {uplink_counts['receipts']}, "
              f"central store verification: {'OK' if not central_report else 'FAILED'}", file=out, flush=True)
    if options.json_output:
        print(json.dumps(summary, ensure_ascii=False), file=out, flush=True)
    return 0 if not errors else 1


def _cpu_now(central: DemoCentral | None) -> list[float]:
    """CPU seconds so far of this process, and of the central when it runs in a process of its own."""
    if isinstance(central, CentralProcess):
        return [own_cpu_s(), central.cpu_s()]
    return [own_cpu_s()]


async def _start_central(
    options: DemoOptions, workdir: Path, out: Any
) -> tuple[DemoCentral | None, LocalBroker | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The embedded central (over HTTPS, or over MQTT with its broker) or, with `central_process`, the
    central in its own process (HTTPS), and the station's [uplink] and [mqtt] sections that reach it;
    nothing without `options.central`."""
    central: DemoCentral | None = None
    broker: LocalBroker | None = None
    uplink: dict[str, Any] | None = None
    station_mqtt: dict[str, Any] | None = None
    if options.central and options.transport == "mqtt":
        central, broker, broker_url = await _start_central_over_mqtt(options, workdir, out)
        # MQTT only: the station knows no central URL, everything goes through the broker.
        uplink = {"transport": "mqtt", "identity_dir": str(central.bundle_dir)}
        station_mqtt = {"broker_url": broker_url}
    elif options.central and options.central_process:
        central = await CentralProcess.start(workdir, STATION_ID, workdir / "station-store")
        uplink = central.uplink_config()
        print(f"central receiver: `edge central run --config {central.config_file}` (pid {central.pid}, "
              f"its log in {central.log_file}) listening on {central.url} (mutual TLS); auditor console "
              f"on {central.console_url}/console/ (no account made: `edge central account` adds one)",
              file=out, flush=True)
    elif options.central:
        central = await EmbeddedCentral.start(workdir, STATION_ID, workdir / "station-store")
        uplink = central.uplink_config()
        print(f"central receiver listening on {central.url} (mutual TLS)", file=out, flush=True)
    if isinstance(central, EmbeddedCentral):
        console_password = workdir / "console-auditor.password"
        central.console_account("demo-auditor", console_password)
        print(f"auditor console: {central.console_url}/console/ (account demo-auditor, a supervisor; its "
              f"password and TOTP enrolment URI are in {console_password}; the demo's CA is not one the "
              "browser knows)", file=out, flush=True)
    return central, broker, uplink, station_mqtt


async def _start_central_over_mqtt(
    options: DemoOptions, workdir: Path, out: Any
) -> tuple[EmbeddedCentral, LocalBroker | None, str]:
    """The demo central with its MQTT receiver, (without --broker) a local Mosquitto running the shipped
    agency configuration, and the broker's URL. The broker's server certificate and the central's broker
    identity come from the central's CA, as an administrator makes them with `edge central broker-cert` and
    `edge central mqtt-identity`."""
    identity_dir, broker_dir = workdir / "central-mqtt-identity", workdir / "broker-tls"
    port = free_port() if options.broker_url is None else None
    broker_url = options.broker_url or f"mqtts://127.0.0.1:{port}"
    config = EmbeddedCentral.make_config(
        workdir / "central-store",
        mqtt={
            "broker_url": broker_url,
            "ca_file": str(identity_dir / "ca.crt"),
            "client_bundle_dir": str(identity_dir),
        },
    )
    loop = asyncio.get_running_loop()
    bundle_dir = await loop.run_in_executor(
        None, EmbeddedCentral.initialise, config, workdir, STATION_ID, workdir / "station-store"
    )
    await loop.run_in_executor(
        None, issue_mqtt_identities, config, identity_dir, broker_dir, ["localhost", "127.0.0.1"]
    )
    broker: LocalBroker | None = None
    if options.broker_url is None:
        tls = BrokerTls(broker_dir / "ca.crt", broker_dir / "server.crt", broker_dir / "server.key",
                        broker_dir / "ca.crl")
        broker = LocalBroker(workdir / "broker", tls, central_id=config.central.id, port=port)
        await broker.start()
        print(f"MQTT broker: mosquitto on {broker.url} (config/mosquitto/ as shipped: TLS, client "
              f"certificates, the agency ACL; its files in {broker.root})", file=out, flush=True)
    else:
        print(f"MQTT broker: {broker_url}. It must trust the demo central's CA ({identity_dir / 'ca.crt'}), "
              f"present a certificate from it ({broker_dir}) and give user {config.central.id} every "
              "station's topics (config/mosquitto/acl)", file=out, flush=True)
    try:
        central = await EmbeddedCentral.serve(config, bundle_dir)
    except BaseException:
        if broker is not None:
            await broker.stop()
        raise
    print(f"central receiver on {central.url} (mutual TLS) and on the broker as {config.central.id} "
          f"(its certificate in {identity_dir}); the station sends everything over MQTT",
          file=out, flush=True)
    return central, broker, broker_url


async def _stop_services(central: DemoCentral | None, broker: LocalBroker | None) -> None:
    """The demo's central, then its broker (stopped even when the central's stop fails)."""
    try:
        if central is not None:
            await central.stop()
    finally:
        if broker is not None:
            await broker.stop()


@dataclass(frozen=True)
class DemoVerification:
    """`edge verify` of a demo's station store (with the central's key, when there was a central) and of
    its central's store, with the uplink's drain: what every demo's summary reports."""

    station: VerifyReport
    central: list[Problem] | None  # None without a central
    drained: bool

    @property
    def central_verified(self) -> bool | None:
        return None if self.central is None else not self.central

    def errors(self) -> list[str]:
        errors = [f"{p.where}: {p.what}" for p in self.station.problems]
        if not self.drained:
            errors.append("the uplink did not drain the spool in time")
        return errors + [f"central {p.where}: {p.what}" for p in self.central or ()]


async def verify_demo(loop: asyncio.AbstractEventLoop, config: StationConfig, central: DemoCentral | None,
                      *, drained: bool) -> DemoVerification:
    central_key = central.signing_public_key() if central is not None else None
    station = await loop.run_in_executor(
        None, lambda: verify_store(config.station.store_dir, central_key=central_key))
    central_problems = None
    if central is not None:
        central_problems = await loop.run_in_executor(
            None, lambda: verify_central_store(central.store_dir, central_public_key=central_key))
    return DemoVerification(station, central_problems, drained)


def started_in_own_process(options: DemoOptions) -> None:
    """The station is ready: when the demo is its process (`edge demo`), its start-up objects go out of
    the cyclic collector's reach (:mod:`edge.runtime.collector`); never in a test's process."""
    if options.own_process:
        freeze_start_up_objects("demo station")


def _print_urls(out: Any, agent: StationAgent) -> None:
    api = agent.api
    if api is None:
        print("the station's local API did not start (see the log)", file=out, flush=True)
        return
    print(f"station API: {api.socket_path} (edge status --socket {api.socket_path})", file=out)
    if api.tcp_url is not None:
        print(f"dock screen: {api.tcp_url}/dock  (status JSON: {api.tcp_url}/api/v1/status)", file=out)
    out.flush()


async def _keep_running(out: Any, agent: StationAgent) -> None:
    """Keep the station, its API (and the central) up until Ctrl-C or SIGTERM, for a person to look."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    try:
        _print_urls(out, agent)
        print("the station keeps running: press Ctrl-C to stop it", file=out, flush=True)
        await interrupted.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("stopping", file=out, flush=True)


def _print_table(
    out: Any,
    agent: StationAgent,
    specs: list[RecorderSpec],
    leds: dict[int, str],
    remaining: dict[str, int],
    store_ok: bool,
) -> None:
    console = Console(file=out, highlight=False)
    if console.is_terminal:
        table = Table(title="Docked recorders", title_justify="left")
        columns = ("bay", "recorder", "officer", "items", "MiB", "verified", "wiped", "left", "LED", "errors")
        for column in columns:
            table.add_column(column, justify="left" if column in ("recorder", "officer", "LED") else "right")
        for i, spec in enumerate(specs):
            view = agent.views.get(spec.device_serial)
            p = view.progress if view else None
            table.add_row(
                str(i + 1), Text(spec.device_serial), Text(f"{spec.officer_name} {spec.officer_no}"),
                str(p.files_done if p else 0), f"{(p.bytes_done if p else 0) / (1 << 20):.1f}",
                str(p.verified if p else 0), str(p.wiped if p else 0), str(remaining[spec.device_serial]),
                leds.get(i + 1, ""),
                Text(str(len(p.errors) if p else 0), style="red" if p and p.errors else ""),
            )
        console.print(table)
        console.print(Text("store verification: " + ("OK" if store_ok else "FAILED"),
                           style="green" if store_ok else "bold red"))
        return
    print("", file=out)
    print(
        f"{'bay':>3}  {'recorder':<9} {'officer':<14} {'items':>5} {'MiB':>8} {'verified':>8} {'wiped':>5} "
        f"{'left':>4}  {'LED':<8} errors",
        file=out,
    )
    for i, spec in enumerate(specs):
        view = agent.views.get(spec.device_serial)
        p = view.progress if view else None
        officer = _pad(f"{spec.officer_name} {spec.officer_no}", 14)
        print(
            f"{i + 1:>3}  {spec.device_serial:<9} {officer} {p.files_done if p else 0:>5} "
            f"{(p.bytes_done if p else 0) / (1 << 20):>8.1f} {p.verified if p else 0:>8} "
            f"{p.wiped if p else 0:>5} {remaining[spec.device_serial]:>4}  {leds.get(i + 1, ''):<8} "
            f"{len(p.errors) if p else 0}",
            file=out,
        )
    print(f"store verification: {'OK' if store_ok else 'FAILED'}", file=out, flush=True)


def _pad(text: str, width: int) -> str:
    """Left-align text that may hold CJK characters, which take two terminal columns."""
    columns = sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)
    return text + " " * max(0, width - columns)
