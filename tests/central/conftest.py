"""Shared fixtures for the central tests: stations built from the real custody code.

A :class:`FakeStation` keeps a real :class:`~edge.custody.ledger.Ledger` in an in-memory SQLite database
signed with a real :class:`~edge.custody.keys.StationKey`, and builds signed manifests exactly as the
station does, so the central is tested against what stations really send.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.central.index import CentralIndex
from edge.central.log import MerkleLog
from edge.central.log import create_schema as create_log_schema
from edge.central.objects import FileObjectStore
from edge.central.registration import Caller, Registrar
from edge.central.tus_store import TusUploadStore
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.ledger import Checkpoint, EntryType, Ledger, LedgerEntry, station_time_now
from edge.custody.manifest import manifest_bytes, sign_manifest

CERT_SHA = "c" * 64


@dataclass
class Acquired:
    item: str
    content: bytes
    manifest: dict[str, Any]
    entry: LedgerEntry

    @property
    def sha256(self) -> str:
        return sha256_hex(self.content)


@dataclass
class FakeStation:
    """A station's ledger and signing key, producing what the uplink sends."""

    station_id: str
    key: StationKey = field(default_factory=StationKey.generate)
    conn: sqlite3.Connection = field(default_factory=lambda: sqlite3.connect(":memory:"))

    def __post_init__(self) -> None:
        Ledger.create_schema(self.conn)
        self.conn.commit()
        self.ledger = Ledger(self.conn, self.station_id, self.key)

    def record(self, type_: str, item: str | None, data: dict[str, Any]) -> LedgerEntry:
        with self.conn:
            return self.ledger.append(type_, item, data)

    def acquire(
        self,
        content: bytes,
        *,
        case_number: str = "A-2024-001",
        officer_no: str = "001234",
        officer_name: str = "张三",
        device_serial: str = "DSJ-0001",
        acquired_utc: str | None = None,
        manifest_station: str | None = None,
    ) -> Acquired:
        item = str(uuid.uuid4())
        sha = sha256_hex(content)
        entry = self.record(EntryType.ACQUIRED, item, {"device_serial": device_serial, "size": len(content),
                                                       "sha256": sha, "attempt": 0})
        self.record(EntryType.VERIFIED, item, {"sha256": sha})
        manifest = {
            "format": "evidence-edge/manifest/1",
            "item": item,
            "sha256": sha,
            "size": len(content),
            "media": {"container": "mp4"},
            "original": {"name": "20240131080000_0001.MP4", "path": "DCIM/20240131080000_0001.MP4"},
            "source": {
                "kind": "usb",
                "station": manifest_station or self.station_id,
                "device_serial": device_serial,
                "officer_no": officer_no,
                "officer_name": officer_name,
                "unit_code": "320100",
                "unit_name": "市局",
            },
            "time": {
                "recorded_start": "2024-01-31T08:00:00",
                "acquired_utc": acquired_utc or station_time_now(),
                "station_clock_synchronised": True,
            },
            "case": {
                "case_number": case_number,
                "location": "Nanjing",
                "collector": f"{officer_name}({officer_no})",
                "subject": "traffic stop",
                "important": False,
                "category": "traffic",
                "retention": "6-months",
            },
            "chain": {"seq": entry.seq, "entry_hash": entry.hash},
        }
        signed = sign_manifest(manifest, self.key)
        self.record(EntryType.SEALED, item, {"manifest_sha256": sha256_hex(manifest_bytes(signed))})
        return Acquired(item, content, signed, entry)

    def tag(self, item: str, changes: dict[str, Any], by: str = "clerk") -> LedgerEntry:
        return self.record(EntryType.TAGGED, item, {"changes": changes, "previous": {}, "by": by})

    def checkpoint(self) -> Checkpoint:
        with self.conn:
            cp = self.ledger.checkpoint()
        assert cp is not None
        return cp

    def segment(self, after_seq: int = 0) -> dict[str, Any]:
        """Entries after ``after_seq`` and a checkpoint on the last one, as the uplink posts them."""
        entries = [e.to_dict() for e in self.ledger.entries(after_seq + 1)]
        return {"entries": entries, "checkpoint": self.checkpoint().to_dict()}


@pytest.fixture
def station() -> Iterator[FakeStation]:
    fake = FakeStation("st-0001")
    yield fake
    fake.conn.close()


@pytest.fixture
def other_station() -> Iterator[FakeStation]:
    fake = FakeStation("st-0002")
    yield fake
    fake.conn.close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[CentralIndex]:
    idx = CentralIndex.open(tmp_path / "index.db")
    yield idx
    idx.close()


def enroll(index: CentralIndex, station: FakeStation, cert_sha256: str = CERT_SHA) -> None:
    index.enroll_station(station.station_id, station.key.public_key_b64, cert_sha256)


@dataclass
class CentralParts:
    """The central's core without HTTP: index, objects, Merkle log, uploads and the registrar."""

    root: Path
    index: CentralIndex
    objects: FileObjectStore
    merkle: MerkleLog
    uploads: TusUploadStore
    registrar: Registrar
    signing_key: StationKey

    def upload(self, station_id: str, data: bytes, *, length: int | None = None) -> str:
        """A tus upload of ``data`` owned by ``station_id`` (incomplete when ``length`` is larger)."""
        info = self.uploads.create(station_id, len(data) if length is None else length)
        write = self.uploads.begin_write(info.upload_id, offset=0)
        try:
            write.write(data)
            write.finish()
        finally:
            write.close()
        return info.upload_id

    def caller(self, station_id: str, remote: str | None = "127.0.0.1") -> Caller:
        record = self.index.station(station_id)
        assert record is not None
        return Caller(record, remote)


def make_central_parts(root: Path, origin: str = "central-test") -> CentralParts:
    index = CentralIndex.open(root / "index.db")
    with index.transaction():
        create_log_schema(index.conn)
    key = StationKey.generate()
    merkle = MerkleLog(index.conn, key, origin)
    objects = FileObjectStore(root / "objects")
    uploads = TusUploadStore(root / "uploads", max_size_bytes=1 << 30, expire_after_s=3600)
    registrar = Registrar(index, objects, merkle, uploads)
    return CentralParts(root, index, objects, merkle, uploads, registrar, key)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[CentralParts]:
    built = make_central_parts(tmp_path / "central")
    yield built
    built.index.close()
