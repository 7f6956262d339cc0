"""A central holding evidence that a real station sent: recorders docked, offloaded, sealed, uploaded with
tus over mutual TLS, receipted, one item tagged with a case number afterwards; and readers with their
certificates.

The station run takes seconds, so it runs once per session (:func:`station_evidence`); each test gets its
own copy of the central store, served by its own central on a free port (:func:`audit_central`), so a
test may tamper with it freely.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.config import CentralConfig, CentralLayout
from edge.central.embedded import EmbeddedCentral, free_port
from edge.central.identity import enroll_reader
from edge.central.index import ItemQuery, ItemRecord, ReaderScope, Role
from edge.central.service import RunningCentral, start_central
from edge.central.sqlite import SqliteIndex
from edge.custody.ledger import Ledger
from edge.ingest.tagging import tag_item
from edge.pki.tls import client_ssl_context
from tests.station.harness import eventually, simulated_station, spec

STATION = "TEST-STATION"
CASE = "A-2026-001"
OTHER_CASE = "B-2026-002"
UNIT_A = ("330100000000", "杭州市综合行政执法局")
UNIT_B = ("330200000000", "宁波市综合行政执法局")
FAST = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 2, "breaker_open_s": 0.2,
        "request_timeout_s": 20, "ledger_push_delay_s": 0.1}


@dataclass(frozen=True)
class StationEvidence:
    """The central store a station filled, and what the test knows about its items independently."""

    central_store: Path
    officers: dict[str, str]  # officer number -> unit code
    files_per_officer: dict[str, int]
    important_names: int  # recorder files the recorder itself marked important (_IMP)
    tagged_item: str  # officer B's item tagged into CASE after the upload


async def _run_station(root: Path, checkpoint_every: int | None = None) -> StationEvidence:
    """``checkpoint_every``: the station's checkpoint cadence; None keeps the configured default."""
    store = root / "store"
    central = await EmbeddedCentral.start(root, STATION, store)
    specs = [
        spec(0, files=5, unit_code=UNIT_A[0], unit_name=UNIT_A[1]),
        spec(1, files=3, unit_code=UNIT_B[0], unit_name=UNIT_B[1], officer_name="李娜"),
    ]
    names: list[str] = []
    extra_sections: dict[str, Any] = (
        {"station": {"checkpoint_every": checkpoint_every}} if checkpoint_every else {})
    try:
        async with simulated_station(
            root, specs, uplink={**central.uplink_config(), **FAST},
            wipe={"policy": "after-receipt", "receipt_wait_s": 60},
            officers={specs[0].officer_no: {"case_number": CASE},
                      specs[1].officer_no: {"case_number": OTHER_CASE}},
            **extra_sections,
        ) as station:
            for s in specs:
                names += [n for n in station.bus.volume_files(s.device_serial)
                          if n.lower().endswith((".mp4", ".jpg", ".wav"))]
            await station.dock_recorder(specs[0].device_serial, 1)
            await station.dock_recorder(specs[1].device_serial, 2)
            await station.wait_results(2)
            agent_store = station.agent.store
            assert agent_store is not None
            index = central.running.parts.index
            everything = ReaderScope("test", Role.SUPERVISOR, frozenset())
            page, _ = index.query_items(ItemQuery(officer_no=specs[1].officer_no, limit=1000), everything)
            tagged = page[0]["item"]
            # A clerk adds the case number later: a signed `tagged` entry the uplink pushes to the central.
            tag_item(agent_store, tagged, {"case_number": CASE}, by="clerk-01")
            await eventually(lambda: index.ledger_head(STATION)[0] == agent_store.ledger.head()[0], 30)
    finally:
        await central.stop()
    return StationEvidence(
        central_store=central.store_dir,
        officers={specs[0].officer_no: UNIT_A[0], specs[1].officer_no: UNIT_B[0]},
        files_per_officer={specs[0].officer_no: 5, specs[1].officer_no: 3},
        important_names=sum("_IMP" in name.upper() for name in names),
        tagged_item=tagged,
    )


_BUILT: list[StationEvidence] = []


def build_station_evidence(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    """The station's evidence, made once per test session (the browser tests share it)."""
    if not _BUILT:
        _BUILT.append(asyncio.run(_run_station(tmp_path_factory.mktemp("station-evidence"))))
    return _BUILT[0]


@pytest.fixture(scope="session")
def station_evidence(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    return build_station_evidence(tmp_path_factory)


@dataclass
class AuditCentral:
    running: RunningCentral
    config: CentralConfig
    workdir: Path
    evidence: StationEvidence

    @property
    def url(self) -> str:
        return str(self.running.url)

    @property
    def index(self) -> SqliteIndex:
        index = self.running.parts.index
        assert isinstance(index, SqliteIndex)
        return index

    @property
    def store(self) -> Path:
        return self.config.central.store_dir

    def reader(self, name: str, role: Role = Role.SUPERVISOR, *units: str) -> aiohttp.ClientSession:
        """A TLS session with the reader certificate of ``name``, enrolled now and granted ``role`` (over
        ``units`` for a reader)."""
        bundle = self.workdir / f"reader-{name}-{uuid.uuid4().hex[:8]}"
        enrollment = enroll_reader(self.config, name, out_dir=bundle)
        self.index.enroll_reader(name, enrollment.cert_sha256)
        self.running.parts.console.grant(name, role, units, by="admin", reason="test")
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(bundle)))

    def items(self, case: str | None = None) -> list[ItemRecord]:
        everything = ReaderScope("test", Role.SUPERVISOR, frozenset())
        page, _ = self.index.query_items(ItemQuery(case_number=case, limit=1000), everything)
        records = [self.index.item(row["item"]) for row in page]
        return [r for r in records if r is not None]

    def object_path(self, sha256: str) -> Path:
        return self.running.parts.file_objects.path_of(sha256)


async def _audit_central(tmp_path: Path, evidence: StationEvidence) -> AsyncIterator[AuditCentral]:
    store = tmp_path / "central-store"
    shutil.copytree(evidence.central_store, store, symlinks=True)
    config = EmbeddedCentral.make_config(store, port=free_port())
    assert CentralLayout(store).index_db.is_file()
    running = await start_central(config)
    try:
        yield AuditCentral(running, config, tmp_path, evidence)
    finally:
        await running.stop()


@pytest.fixture
async def audit_central(tmp_path: Path, station_evidence: StationEvidence) -> AsyncIterator[AuditCentral]:
    async for central in _audit_central(tmp_path, station_evidence):
        yield central


_BUILT_EVERY_64: dict[str, StationEvidence] = {}


def _evidence_every_64(tmp_path_factory: pytest.TempPathFactory, ledger_format: int) -> StationEvidence:
    key = f"format-{ledger_format}"
    if key not in _BUILT_EVERY_64:
        root = tmp_path_factory.mktemp(f"station-evidence-64-{key}")
        with pytest.MonkeyPatch.context() as patch:
            if ledger_format == 1:
                # The append of the release before ledger format 2 (no entry_salt), put back for the run.
                patch.setattr(Ledger, "_with_salt", staticmethod(lambda data: dict(data)))
            _BUILT_EVERY_64[key] = asyncio.run(_run_station(root, checkpoint_every=64))
    return _BUILT_EVERY_64[key]


@pytest.fixture(scope="session")
def station_evidence_every_64(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    """The same run by a station of the release before ledger format 2 that signed a checkpoint only every
    64 entries (that release's old default): its redacted lines cannot be recomputed."""
    return _evidence_every_64(tmp_path_factory, 1)


@pytest.fixture(scope="session")
def station_evidence_every_64_format_2(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    """The same run by today's station signing a checkpoint only every 64 entries."""
    return _evidence_every_64(tmp_path_factory, 2)


@pytest.fixture
async def audit_central_every_64(tmp_path: Path, station_evidence_every_64: StationEvidence
                                 ) -> AsyncIterator[AuditCentral]:
    async for central in _audit_central(tmp_path, station_evidence_every_64):
        yield central


@pytest.fixture
async def audit_central_every_64_format_2(tmp_path: Path, station_evidence_every_64_format_2: StationEvidence
                                          ) -> AsyncIterator[AuditCentral]:
    async for central in _audit_central(tmp_path, station_evidence_every_64_format_2):
        yield central
