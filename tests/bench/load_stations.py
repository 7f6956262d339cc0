"""The station side of the load benchmark (tests/bench/central_load.py): N stations in one process.

Each station is a real station store (its own Ed25519 ledger key, items offloaded by the station's own
`VolumeOffload` from a simulated recorder volume: signed manifests, ledger entries, sealed copies) and
the station's real uplink (`UplinkService` with the tus transport over mutual TLS with its own enrolment
bundle: sha256-prefix chunk checksums, registration with its ledger segment, the receipt verified against
the central key pinned at enrolment). All N uplinks run as tasks of one event loop, not as N processes:
they share this process's default thread pool for file reads, which N station computers would not.

The baseline sends the same stored files to the same receivers with the same mutual TLS and the same
number in flight per station: one plain tus creation-with-upload POST per file (aiohttp), no checksums,
no registration, no receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp

from edge.config.station import StationConfig
from edge.ingest.store import StationStore
from edge.pki.tls import client_ssl_context
from edge.uplink.service import UplinkService
from edge.uplink.transport import Accepted, LedgerSegment, Link, RegisterOutcome, Transport
from edge.uplink.transports import transport_for

OFFICER_NO = "110001"


@dataclass(frozen=True)
class Station:
    station_id: str
    store: Path
    bundle: Path
    receiver: str = ""  # the URL of the receiver this station is pinned to

    @property
    def public_key(self) -> Path:
        return self.store / "keys" / "station.key.pub"

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.store / "items").rglob("*")
                      if p.is_file() and not p.name.endswith(".json"))


def make_templates(folder: Path, items: int, item_bytes: int) -> list[Path]:
    """One real MP4 per item position (ffmpeg; a few seconds in all), copied into every station's volume."""
    from simulators.recorder.media import make_mp4

    folder.mkdir(parents=True)
    templates = []
    for number in range(items):
        path = folder / f"template-{number}.mp4"
        make_mp4(path, size_bytes=item_bytes, seed=number + 1)
        templates.append(path)
    return templates


def _unique_copy(template: Path, target: Path, tag: bytes) -> None:
    """The template with an MP4 `free` box appended (size, type, payload: ignored by every reader): each
    station's items have content of their own, as the bucket keys objects by SHA-256."""
    shutil.copyfile(template, target)
    with open(target, "ab") as out:
        out.write(struct.pack(">I4s", 8 + len(tag), b"free") + tag)


def station_volume(root: Path, number: int, templates: list[Path]) -> Path:
    from simulators.recorder.volume import param_ini_bytes, recorder_file_name

    serial = f"33{number:05d}"
    volume = root / f"ZFY_{serial}"
    media = volume / "DCIM" / "100MEDIA"
    media.mkdir(parents=True)
    (volume / "PARAM.INI").write_bytes(param_ini_bytes(
        device_serial=serial, officer_no=OFFICER_NO, officer_name="张伟", unit_code="330100000000",
        unit_name="杭州市综合行政执法局",
    ))
    start = datetime(2026, 11, 20, 8, 0, 0)
    for position, template in enumerate(templates):
        name = recorder_file_name(OFFICER_NO, serial, start + timedelta(minutes=10 * position), position + 1,
                                  False, "MP4")
        _unique_copy(template, media / name, f"bench station {number} item {position}".encode())
    return volume


def build_station(work: Path, number: int, templates: list[Path]) -> Station:
    """A station store holding its items, offloaded from a recorder volume (set-up, not timed)."""
    from tests.bench.upload import acquire_into

    station_id = f"LOAD-{number:04d}"
    volume = station_volume(work / "volumes" / f"{number:04d}", number, templates)
    store = work / "stations" / station_id
    acquire_into(station_id, store, volume)
    shutil.rmtree(volume.parent)
    return Station(station_id, store, work / "bundles" / station_id)


def uplink_config(station: Station, concurrency: int) -> StationConfig:
    from tests.bench.upload import station_config

    return cast(StationConfig, station_config(station.station_id, station.store, station.store, {
        "central_url": station.receiver,
        "identity_dir": str(station.bundle),
        "concurrency": concurrency,
    }))


# -- registration latency: the station's own link, each registration call timed -------------------


@dataclass
class Registrations:
    """Seconds of each registration call answered with a receipt, and how many were not (retry later:
    a 503, a time-out, a cut connection; refused: e.g. a stale ledger head, then sent again)."""

    accepted_s: list[float]
    not_accepted: int = 0


class _TimedLink:
    """The tus link as the station opened it; `register` (the POST that carries the signed manifest and
    the ledger segment, answered with the receipt) is timed, everything else passes through."""

    def __init__(self, link: Link, latencies: Registrations) -> None:
        self._link = link
        self._latencies = latencies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)

    async def register(
        self, upload: str, manifest: Mapping[str, Any], segment: LedgerSegment | None
    ) -> RegisterOutcome:
        started = time.perf_counter()
        outcome = await self._link.register(upload, manifest, segment)
        if isinstance(outcome, Accepted):
            self._latencies.accepted_s.append(time.perf_counter() - started)
        else:
            self._latencies.not_accepted += 1
        return outcome


class _TimedTransport:
    def __init__(self, transport: Transport, latencies: Registrations) -> None:
        self.name = transport.name
        self._transport = transport
        self._latencies = latencies

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[Link]:
        async with self._transport.connect() as link:
            yield cast(Link, _TimedLink(link, self._latencies))


@dataclass
class FleetRun:
    seconds: float
    cpu_s: float
    items: int
    receipts: int
    bytes_sent: int
    resumed: int
    registrations: Registrations
    warnings: int  # what the uplinks warned of: retries (refused connections, 503s), the breaker opening


class _WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def run_uplinks(stations: list[Station], concurrency: int, timeout_s: float,
                      cpu_s: Callable[[], float]) -> FleetRun:
    """Every station's uplink drains its spool at once, in this event loop; returns when all are
    receipted (or raises SystemExit naming the stations still waiting after ``timeout_s``)."""
    latencies = Registrations([])
    stores = [StationStore(s.store, s.station_id) for s in stations]
    services = []
    for station, store in zip(stations, stores, strict=True):
        config = uplink_config(station, concurrency)
        services.append(UplinkService(
            config, store, transport=_TimedTransport(transport_for(config, None), latencies)))
    # The transport's and the PKI's modules are imported on the first connection: paid before timing.
    import edge.pki.tls
    import edge.uplink.tus_transport  # noqa: F401

    warnings = _WarningCount()
    logging.getLogger("edge.uplink").addHandler(warnings)
    cpu_before = cpu_s()
    started = time.perf_counter()
    tasks = [asyncio.create_task(service.run(), name=f"uplink-{s.station_id}")
             for service, s in zip(services, stations, strict=True)]
    try:
        drained = await asyncio.gather(*(service.wait_drained(timeout_s) for service in services))
        seconds = time.perf_counter() - started
        cpu = cpu_s() - cpu_before
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        logging.getLogger("edge.uplink").removeHandler(warnings)
    failed = [task.exception() for task in tasks if not task.cancelled() and task.exception() is not None]
    stuck = [s.station_id for s, done in zip(stations, drained, strict=True) if not done]
    try:
        if stuck or failed:
            raise SystemExit(f"uplinks not drained after {timeout_s} s: {stuck[:5]} ({len(stuck)}); "
                             f"stopped: {failed[:3]}")
        items = sum(store.conn.execute("SELECT count(*) FROM items WHERE path IS NOT NULL").fetchone()[0]
                    for store in stores)
        return FleetRun(
            seconds=seconds, cpu_s=cpu, items=items,
            receipts=sum(service.spool.counts().get("receipted", 0) for service in services),
            bytes_sent=sum(service.stats.bytes_sent for service in services),
            resumed=sum(service.stats.resumed for service in services),
            registrations=latencies,
            warnings=warnings.count,
        )
    finally:
        for store in stores:
            store.close()


# -- the baseline ------------------------------------------------------------------------------------


# The central answers 503 (a receiver's [uploads] max_upload_connections) or 429 (a station's
# station_max_writes) with Retry-After when it is writing as many uploads as it may; the baseline waits and
# sends again, as `curl --retry` does. Counted, and printed with the figures.
BASELINE_RETRY_CODES = {429, 503}
BASELINE_MAX_RETRIES = 1000


@dataclass
class BaselineRetries:
    count: int = 0


async def _plain_post(session: aiohttp.ClientSession, url: str, path: Path, retries: BaselineRetries) -> int:
    size = path.stat().st_size
    for _ in range(BASELINE_MAX_RETRIES):
        with open(path, "rb") as body:
            async with session.post(f"{url}/v1/uploads", data=body, headers={
                "Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                "Content-Type": "application/offset+octet-stream",
            }) as answer:
                if answer.status == 201:
                    return size
                if answer.status not in BASELINE_RETRY_CODES:
                    raise SystemExit(f"baseline POST to {url}: {answer.status} {(await answer.text())[:500]}")
                wait_s = float(answer.headers.get("Retry-After", "1") or 1)
        retries.count += 1
        await asyncio.sleep(min(max(wait_s, 0.1), 10.0))
    raise SystemExit(f"baseline POST to {url}: still refused after {BASELINE_MAX_RETRIES} tries")


async def _station_baseline(station: Station, concurrency: int, retries: BaselineRetries) -> int:
    files = station.stored_files()
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(station.bundle), limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> int:
            async with gate:
                return await _plain_post(session, station.receiver, path, retries)

        return sum(await asyncio.gather(*(one(path) for path in files)))


async def run_baseline(stations: list[Station], concurrency: int, cpu_s: Callable[[], float],
                       retries: BaselineRetries | None = None) -> tuple[float, float, int]:
    """(seconds, CPU seconds of this process, bytes): every station's stored files sent at once."""
    retries = retries if retries is not None else BaselineRetries()
    cpu_before = cpu_s()
    started = time.perf_counter()
    sent = sum(await asyncio.gather(*(_station_baseline(s, concurrency, retries) for s in stations)))
    return time.perf_counter() - started, cpu_s() - cpu_before, sent
