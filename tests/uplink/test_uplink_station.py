"""The station uplink against a real central receiver (mutual TLS on a real port), end to end:
recorder → station → central → receipt → erase, and the faults the issue names on the station side."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from drivers.serial.dock import BayLed
from edge.central.config import CentralConfig
from edge.central.embedded import EmbeddedCentral, enroll, free_port
from edge.central.identity import init_central
from edge.central.service import start_central
from edge.central.verify import verify_central_store
from edge.custody.keys import StationKey, load_public_key
from edge.sources.usb.offload import OffloadOutcome
from edge.verify.station import verify_store
from tests.station.harness import Station, eventually, simulated_station, spec

STATION = "TEST-STATION"
FAST_RETRY = {
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.3,
    "breaker_failures": 2,
    "breaker_open_s": 0.2,
    "request_timeout_s": 20,
}


def enrolled_central(tmp_path: Path, **uplink_settings: Any) -> tuple[CentralConfig, dict[str, Any]]:
    """A central that exists (the station is enrolled, its key pinned) but is not running yet, and the
    station's [uplink] section for it with `uplink_settings`."""
    config = EmbeddedCentral.make_config(tmp_path / "central-store", port=free_port())
    init_central(config)
    enroll(config, STATION, tmp_path / "store", tmp_path / "bundle")
    uplink = {
        "central_url": f"https://127.0.0.1:{config.server.port}",
        "identity_dir": str(tmp_path / "bundle"),
        **uplink_settings,
    }
    return config, uplink


@asynccontextmanager
async def one_recorder_offloaded(
    root: Path, *, receipt_wait_s: float = 60, **uplink_settings: Any
) -> AsyncIterator[tuple[EmbeddedCentral, Station]]:
    """A running embedded central and a station uplinking to it (``FAST_RETRY`` and ``uplink_settings``,
    erasing after receipt) once the station has offloaded one recorder (``spec(0)``) docked in bay 1.

    The station stops when the block ends, then the central."""
    central = await EmbeddedCentral.start(root, STATION, root / "store")
    s = spec(0)
    try:
        async with simulated_station(
            root,
            [s],
            uplink={**central.uplink_config(), **FAST_RETRY, **uplink_settings},
            wipe={"policy": "after-receipt", "receipt_wait_s": receipt_wait_s},
        ) as station:
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(1)
            yield central, station
    finally:
        await central.stop()


def evidence_on_recorder(station: Station, device_serial: str) -> list[str]:
    return [
        n for n in station.bus.volume_files(device_serial) if n.lower().endswith((".mp4", ".jpg", ".wav"))
    ]


def stored_objects(store: Path) -> list[Path]:
    return sorted(p for p in (store / "items").rglob("*") if p.is_file() and not p.name.endswith(".json"))


async def test_every_item_is_receipted_before_its_recorder_file_is_erased(tmp_path: Path) -> None:
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    specs = [spec(0), spec(1)]
    try:
        async with simulated_station(
            tmp_path,
            specs,
            uplink={**central.uplink_config(), **FAST_RETRY},
            wipe={"policy": "after-receipt", "receipt_wait_s": 60},
        ) as station:
            await station.dock_recorder(specs[0].device_serial, 1)
            await station.dock_recorder(specs[1].device_serial, 2)
            await station.wait_results(2)
            assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2
            assert all(evidence_on_recorder(station, s.device_serial) == [] for s in specs)
            entries = list(station.agent.store.ledger.entries())  # type: ignore[union-attr]
    finally:
        await central.stop()
    items = {e.item for e in entries if e.type == "sealed"}
    assert len(items) == 6
    receipt_seq = {e.item: e.seq for e in entries if e.type == "receipt"}
    wiped_seq = {e.item: e.seq for e in entries if e.type == "wiped"}
    assert set(receipt_seq) == items and set(wiped_seq) == items
    # Invariant 2 with after-receipt: nothing erased before its receipt verified.
    assert all(receipt_seq[i] < wiped_seq[i] for i in items)
    assert all(e.data["verified"] is True for e in entries if e.type == "receipt")
    report = verify_store(tmp_path / "store", central_key=central.signing_public_key())
    assert report.ok, report.problems
    assert report.checked["receipts"] == 6
    assert verify_central_store(central.store_dir) == []


async def test_central_down_at_start_backlog_drains_later_and_erases_at_next_docking(tmp_path: Path) -> None:
    config, uplink = enrolled_central(tmp_path, **FAST_RETRY)
    s = spec(0)
    async with simulated_station(
        tmp_path, [s], uplink=uplink, wipe={"policy": "after-receipt", "receipt_wait_s": 1}
    ) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        result = station.agent.results[0]
        # The central is down: everything is safe at the station, nothing is erased, the bay says so.
        assert result.outcome is OffloadOutcome.AWAITING_RECEIPT
        assert result.awaiting_receipt == 3 and result.wiped == 0
        assert len(evidence_on_recorder(station, s.device_serial)) == 3
        assert await station.led_shows(1, BayLed.RECEIPT)
        assert len(station.ledger("wipe_deferred")) == 3
        assert station.ledger("receipt") == []
        uplink_service = station.agent.uplink
        assert uplink_service is not None
        # Failed attempts until the breaker opens.
        threshold = uplink_service.breaker.failure_threshold
        await eventually(lambda: uplink_service.breaker.consecutive_failures >= threshold)
        # Failures are transient: the breaker opened, every item waits queued, none was refused.
        assert uplink_service.breaker.state.value != "closed"
        assert uplink_service.spool.counts() == {"queued": 3}
        running = await start_central(config)
        try:
            assert await uplink_service.wait_drained(30)
            assert len(station.ledger("receipt")) == 3
            # The local copies go after the retention period (here: at once)...
            assert len(uplink_service.purge(0)) == 3
            assert stored_objects(tmp_path / "store") == []
            # ...and re-docking the recorder still erases what the central has receipted, after
            # checking the recorder's file against the receipted hash (there is no local copy left).
            # Pulled out, and seen to leave (its USB device and the mount of its volume), then docked.
            await station.undock(s.device_serial, 1)
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(2)
            assert station.agent.results[1].outcome is OffloadOutcome.DONE
            assert evidence_on_recorder(station, s.device_serial) == []
            source_only = [e for e in station.ledger("verified") if "purged" in str(e.get("purpose"))]
            assert len(source_only) == 3 and all(e["source_reread"] for e in source_only)
        finally:
            await running.stop()
    assert verify_store(tmp_path / "store").ok


async def test_central_killed_mid_upload_resumes_from_the_offset(tmp_path: Path) -> None:
    config, uplink = enrolled_central(
        tmp_path,
        chunk_mb=1,
        bandwidth_mbit_s=48,  # ~6 MB/s: slow enough to stop the central in the middle
        **FAST_RETRY,
    )
    s = spec(0, files=1, file_mb=16)
    running = await start_central(config)
    uploads_dir = tmp_path / "central-store" / "uploads"
    async with simulated_station(
        tmp_path, [s], uplink=uplink, wipe={"policy": "after-receipt", "receipt_wait_s": 60}
    ) as station:
        await station.dock_recorder(s.device_serial, 1)
        await eventually(lambda: any(p.stat().st_size >= 4 << 20 for p in uploads_dir.glob("*.part")), 60)
        await running.stop()  # the central dies mid-upload
        uplink_service = station.agent.uplink
        assert uplink_service is not None
        # The station has seen it gone (a failed request) before it comes back.
        await eventually(lambda: uplink_service.breaker.consecutive_failures >= 1)
        running = await start_central(config)
        try:
            await station.wait_results(1, timeout_s=120)
        finally:
            await running.stop()
        uploaded = station.ledger("uploaded")
        sizes = [e["size"] for e in station.ledger("acquired")]
    assert len(uploaded) == 1
    resumed_from, sent = uploaded[0]["resumed_from"], uploaded[0]["bytes_sent"]
    assert resumed_from >= 4 << 20, uploaded
    assert sent == sizes[0] - resumed_from  # only the rest was sent again, not the whole file
    assert station.agent.results[0].outcome is OffloadOutcome.DONE
    assert verify_central_store(tmp_path / "central-store") == []


async def test_a_receipt_that_does_not_verify_never_erases_or_purges(tmp_path: Path) -> None:
    impostor = StationKey.load_or_create(tmp_path / "impostor" / "central.key")
    assert impostor.public_path is not None
    async with one_recorder_offloaded(
        tmp_path,
        receipt_wait_s=2,
        # The station pins another central key: every receipt's tree head fails its signature.
        central_signing_key=str(impostor.public_path),
        retention_days=0,
    ) as (_central, station):
        uplink_service = station.agent.uplink
        assert uplink_service is not None
        assert uplink_service.purge(0) == []
        assert station.agent.results[0].outcome is OffloadOutcome.AWAITING_RECEIPT
        assert len(evidence_on_recorder(station, spec(0).device_serial)) == 3
        errors = [e for e in station.ledger("error") if e.get("code") == "bad_receipt"]
        assert errors and "expected the pinned central key" in errors[0]["reason"]
        assert len(errors) <= 3  # once per item, however often the station asks again
        assert station.ledger("receipt") == [] and station.ledger("purged") == []
    assert len(stored_objects(tmp_path / "store")) == 3


async def test_local_copies_are_purged_only_after_receipt_and_retention(tmp_path: Path) -> None:
    async with one_recorder_offloaded(tmp_path, retention_days=30) as (central, station):
        uplink_service = station.agent.uplink
        assert uplink_service is not None
        assert uplink_service.purge(30 * 86400) == []  # retention not yet elapsed
        stored = stored_objects(tmp_path / "store")
        digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in stored}
        purged = uplink_service.purge(0)
        assert len(purged) == 3
        assert not any(p.exists() for p in stored)
        assert len(station.ledger("purged")) == 3
    assert digests
    # The item stays provable: manifest sidecar + receipt at the station, content at the central.
    pinned = load_public_key(central.bundle_dir / "central-signing.pub")
    report = verify_store(tmp_path / "store", central_key=pinned)
    assert report.ok, report.problems
    assert report.checked["purged"] == 3
