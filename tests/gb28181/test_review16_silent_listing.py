"""Review 16: a channel whose RecordInfo fails outright (no answer in time, an answer the parser refuses)
and a device whose Catalog fails with no channels configured leave nothing on the ledger: a log line and
`last_problem` in the operator view, then the pass goes on (or ends) as if there were nothing to download.
Every pass the same, so the device's recordings are never listed, never downloaded, and the record never
says so. Review 14 made an incomplete RecordInfo a ledger error for exactly this reason; a failed one is
the same loss."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import AssembledAnswer
from edge.gb28181.queries import QueryError, QueryTimeout
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"


class Platform:
    def __init__(self, *, catalog_fails: bool = False, record_info: str = "fails") -> None:
        self.catalog_fails, self.record_info = catalog_fails, record_info
        self.registry = {DEVICE: SimpleNamespace(online=True, clock_offset_s=None)}

    async def query_device_status(self, device_id: str) -> Any:
        raise QueryTimeout(f"DeviceStatus of {device_id}: no answer (this device's clock is not measured)")

    def add_online_listener(self, _callback: Any) -> None:
        pass

    async def query_catalog(self, device_id: str) -> list[SimpleNamespace]:
        if self.catalog_fails:
            raise QueryError(f"Catalog of {device_id}: no answer within 30 s")
        return [SimpleNamespace(device_id=CHANNEL)]

    async def query_record_info(self, device_id: str, channel_id: str, start: datetime,
                                end: datetime) -> AssembledAnswer:
        if self.record_info == "fails":
            raise QueryError(f"RecordInfo of {channel_id}: no answer within 30 s")
        return AssembledAnswer(source=device_id, sn=1, cmd_type="RecordInfo", device_id=channel_id,
                               name="cam", sum_num=5, items=(), complete=False, parts=1, duplicates=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _errors_after_pass(platform: Platform, store: StationStore, tmp_path: Path) -> list[dict[str, Any]]:
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    policy = SimpleNamespace(
        wants_device=lambda _d: True, may_download_now=lambda _n: True,
        query_range=lambda now: (now - timedelta(hours=1), now),
        channels_for=lambda _d, catalog: list(catalog), devices={}, transport_for=lambda _d: "udp", speed=1,
        utc_offset_minutes=480)
    scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: datetime(2026, 12, 5, 12, tzinfo=UTC))
    await scheduler._pass(DEVICE, DeviceProgress())
    return [e.data for e in store.ledger.entries() if e.type == "error"]


async def test_a_failed_record_info_is_a_ledger_error(store: StationStore, tmp_path: Path) -> None:
    errors = await _errors_after_pass(Platform(record_info="fails"), store, tmp_path)
    assert [e for e in errors if e.get("channel_id") == CHANNEL], "RecordInfo failed, nothing on the ledger"


async def test_a_failed_catalog_with_no_configured_channel_is_a_ledger_error(store: StationStore,
                                                                             tmp_path: Path) -> None:
    errors = await _errors_after_pass(Platform(catalog_fails=True), store, tmp_path)
    assert [e for e in errors if e.get("device_id") == DEVICE], "Catalog failed, nothing on the ledger"


async def test_control_an_incomplete_record_info_is_a_ledger_error(store: StationStore,
                                                                  tmp_path: Path) -> None:
    errors = await _errors_after_pass(Platform(record_info="incomplete"), store, tmp_path)
    assert [e for e in errors if e.get("channel_id") == CHANNEL and e.get("stage") == "record-info"]
