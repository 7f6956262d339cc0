"""Shared fixtures for the central tests: stations built from the real custody code.

A :class:`FakeStation` keeps a real :class:`~edge.custody.ledger.Ledger` in an in-memory SQLite database
signed with a real :class:`~edge.custody.keys.StationKey`, and builds signed manifests exactly as the
station does, so the central is tested against what stations really send.
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.config import CentralConfig, CentralLayout
from edge.central.console.secret_key import ConsoleSecretKey
from edge.central.identity import enroll_reader, enroll_station, init_central
from edge.central.index import Role
from edge.central.log import MerkleLog
from edge.central.objects import FileObjectStore, ObjectStore
from edge.central.postgres import PostgresDatabase, PostgresIndex
from edge.central.registration import Caller, Registrar
from edge.central.service import RunningCentral, start_central
from edge.central.sqlite import SqliteDatabase, SqliteIndex
from edge.central.sqlite.console import SqliteConsoleStore
from edge.central.storage import ConsoleStore, Index
from edge.central.tus_store import TusUploadStore
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import StationKey
from edge.custody.ledger import Checkpoint, EntryType, Ledger, LedgerEntry, station_time_now
from edge.custody.manifest import manifest_bytes, sign_manifest
from edge.durable.files import ensure_private_dir
from edge.pki.tls import client_ssl_context

# A throwaway single-node Ceph cluster with its S3 gateway, per test session (tests/central/ceph.py).
from tests.central.ceph import ceph_gateway  # noqa: F401

# A throwaway PostgreSQL server and a fresh database per test (tests/central/pg.py).
from tests.central.pg import PostgresDatabaseUnderTest, pg_database, pg_server, split_roles  # noqa: F401

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
        unit_code: str = "320100",
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
                "unit_code": unit_code,
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
def index(tmp_path: Path) -> Iterator[SqliteIndex]:
    idx = SqliteIndex.open(tmp_path / "index.db")
    yield idx
    idx.close()


def enroll(index: Index, station: FakeStation, cert_sha256: str = CERT_SHA) -> None:
    index.enroll_station(station.station_id, station.key.public_key_b64, cert_sha256)


@dataclass
class CentralParts:
    """The central's core without HTTP: index, objects, Merkle log, uploads and the registrar."""

    root: Path
    index: SqliteIndex | PostgresIndex
    objects: ObjectStore
    merkle: MerkleLog
    uploads: TusUploadStore
    registrar: Registrar
    signing_key: StationKey

    @property
    def file_objects(self) -> FileObjectStore:
        """The object store of parts on the default backend (a local folder a test reaches into)."""
        assert isinstance(self.objects, FileObjectStore), type(self.objects)
        return self.objects

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

    @property
    def sqlite_index(self) -> SqliteIndex:
        """The index of parts on the default backend, whose connection a test reaches into."""
        assert isinstance(self.index, SqliteIndex), type(self.index)
        return self.index

    def caller(self, station_id: str, remote: str | None = "127.0.0.1") -> Caller:
        record = self.index.station(station_id)
        assert record is not None
        return Caller(record, remote)


def make_central_parts(
    root: Path, origin: str = "central-test", database: SqliteDatabase | PostgresDatabase | None = None,
    objects: ObjectStore | None = None,
    signing_key: StationKey | None = None,
) -> CentralParts:
    """The parts on ``database`` (by default the embedded SQLite one under ``root``) and ``objects`` (by
    default the local folder ``root/objects``), signing with ``signing_key`` (by default a new one)."""
    console_key = CentralLayout(root).console_key  # made by `edge central init`: it seals the trails
    if not console_key.exists():
        ensure_private_dir(console_key.parent)
        ConsoleSecretKey.create(console_key)
    if database is None:
        database = SqliteDatabase.open(root / "index.db")
    index = database.index
    key = signing_key if signing_key is not None else StationKey.generate()
    merkle = MerkleLog(database.log_store, key, origin)
    objects = objects if objects is not None else FileObjectStore(root / "objects")
    uploads = TusUploadStore(root / "uploads", max_size_bytes=1 << 30, expire_after_s=3600)
    registrar = Registrar(index, objects, merkle, uploads, signing_key=key, central_id=origin)
    return CentralParts(root, index, objects, merkle, uploads, registrar, key)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[CentralParts]:
    built = make_central_parts(tmp_path / "central")
    yield built
    built.index.close()


# -- a central on a real socket ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def central_config(
    store_dir: Path, *, dev: bool, server: Mapping[str, Any] | None = None,
    console: Mapping[str, Any] | None = None, index: Mapping[str, Any] | None = None,
    objects: Mapping[str, Any] | None = None, **uploads: Any
) -> CentralConfig:
    return CentralConfig.model_validate({
        "central": {"id": "central-test", "store_dir": str(store_dir), **({"index": index} if index else {}),
                    **({"objects": objects} if objects else {})},
        "server": {"listen": "127.0.0.1", "port": free_port(), "insecure_plain_http": dev,
                   "names": ["localhost", "127.0.0.1"], **(server or {})},
        "uploads": uploads,
        # The console's own listener on a free port (off by default in production).
        "console": {"listen": "127.0.0.1", "port": 0, **(console or {})},
    })


@dataclass
class HttpCentral:
    """A running central and what a test needs to talk to it."""

    running: RunningCentral
    config: CentralConfig
    workdir: Path

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def console_url(self) -> str:
        """The console's own listener (password sign-in without a certificate)."""
        assert self.running.console_url is not None
        return self.running.console_url

    @property
    def index(self) -> SqliteIndex:
        # The app holds its index as the storage Index protocol; this central is started with the default
        # SQLite backend, whose index the tests reach into (enroll, its connection).
        index = self.running.parts.index
        assert isinstance(index, SqliteIndex), type(index)
        return index

    @property
    def store_index(self) -> Index:
        """The index on whichever backend the central runs (the protocol only)."""
        return self.running.parts.index

    @property
    def central_public_key(self) -> Ed25519PublicKey:
        return self.running.parts.signing_key.public_key()

    def enroll_tls(self, station: FakeStation) -> Path:
        """Issue the station a client certificate (as `edge central enroll` does) and enrol it."""
        pub = self.workdir / f"{station.station_id}.pub"
        pub.write_bytes(station.key.public_pem())
        bundle = self.workdir / f"bundle-{station.station_id}-{uuid.uuid4().hex[:8]}"
        enrollment = enroll_station(self.config, station.station_id, signing_key_pub=pub, out_dir=bundle)
        key_b64 = enrollment.signing_public_key_b64
        assert key_b64 is not None
        self.store_index.enroll_station(station.station_id, key_b64, enrollment.cert_sha256)
        return bundle

    @property
    def console(self) -> SqliteConsoleStore:
        # The store of the default backend, which some tests reach into; tests on both use console_store.
        console = self.running.parts.console
        assert isinstance(console, SqliteConsoleStore), type(console)
        return console

    @property
    def console_store(self) -> ConsoleStore:
        """The console's store on whichever backend the central runs."""
        return self.running.parts.console

    def enroll_reader_tls(self, name: str, *, role: Role = Role.SUPERVISOR,
                          units: tuple[str, ...] = ()) -> Path:
        """Issue a reader certificate (as `edge central enroll-reader`) and grant it ``role`` (as `edge
        central grant`): a supervisor unless a test says otherwise."""
        bundle = self.workdir / f"reader-{name}-{uuid.uuid4().hex[:8]}"
        enrollment = enroll_reader(self.config, name, out_dir=bundle)
        self.store_index.enroll_reader(name, enrollment.cert_sha256)
        self.running.parts.console.grant(name, role, units, by="test-admin", reason="test reader")
        return bundle


async def start_http_central(
    workdir: Path, *, dev: bool, server: Mapping[str, Any] | None = None,
    console: Mapping[str, Any] | None = None, index: Mapping[str, Any] | None = None,
    objects: Mapping[str, Any] | None = None, **uploads: Any
) -> HttpCentral:
    """A central on a free port; ``server``, ``console`` and ``uploads`` override settings of those
    sections, ``index`` is ``[central] index`` (default: the embedded SQLite file), ``objects``
    ``[central] objects`` (default: the local folder)."""
    config = central_config(workdir / "central-store", dev=dev, server=server, console=console, index=index,
                            objects=objects, **uploads)
    if dev:
        running = await start_central(config, signing_key=StationKey.generate())
    else:
        init_central(config)
        running = await start_central(config)
    return HttpCentral(running, config, workdir)


@pytest.fixture
async def dev_central(tmp_path: Path) -> AsyncIterator[HttpCentral]:
    central = await start_http_central(tmp_path, dev=True)
    yield central
    await central.running.stop()


@pytest.fixture
async def tls_central(tmp_path: Path) -> AsyncIterator[HttpCentral]:
    central = await start_http_central(tmp_path, dev=False)
    yield central
    await central.running.stop()


PG_PASSWORD_ENV = "EDGE_TEST_PG_PASSWORD"


def postgres_index(pg: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``[central] index`` for the test database: the URL, the password as a secret reference."""
    monkeypatch.setenv(PG_PASSWORD_ENV, pg.password)
    return {"type": "postgresql", "url": pg.url, "password": f"env:{PG_PASSWORD_ENV}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def central_index(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any] | None:
    """Each backend in turn: None (the embedded default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return postgres_index(request.getfixturevalue("pg_database"), monkeypatch)


@pytest.fixture
async def tls_central_on(tmp_path: Path, central_index: dict[str, Any] | None) -> AsyncIterator[HttpCentral]:
    """:func:`tls_central` on each backend."""
    central = await start_http_central(tmp_path, dev=False, index=central_index)
    yield central
    await central.running.stop()


@pytest.fixture
async def dev_central_on(tmp_path: Path, central_index: dict[str, Any] | None) -> AsyncIterator[HttpCentral]:
    """:func:`dev_central` on each backend."""
    central = await start_http_central(tmp_path, dev=True, index=central_index)
    yield central
    await central.running.stop()


def tls_session(bundle: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(bundle)))


TUS = {"Tus-Resumable": "1.0.0"}


async def tus_upload(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str] | None = None,
    *, length: int | None = None,
) -> str:
    """Create a tus upload and send ``data`` in one PATCH; returns the upload id."""
    base = {**TUS, **(headers or {})}
    async with session.post(f"{url}/v1/uploads", headers={
        **base, "Upload-Length": str(len(data) if length is None else length),
    }) as created:
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    async with session.patch(f"{url}/v1/uploads/{upload_id}", data=data, headers={
        **base, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
    }) as patched:
        assert patched.status == 204, await patched.text()
    return upload_id


async def post_json(
    session: aiohttp.ClientSession, url: str, doc: object, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=canonical_json(doc), headers={
        "Content-Type": "application/json", **(headers or {}),
    }) as response:
        return response.status, await response.json()


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    async with session.get(url, headers=dict(headers or {})) as response:
        return response.status, await response.json()


async def register_over_http(
    session: aiohttp.ClientSession, central_url: str, station: FakeStation, acquired: Acquired,
    headers: Mapping[str, str] | None = None, *, after: int = 0,
) -> tuple[int, dict[str, Any]]:
    """Upload the content with tus and register it with the ledger segment since ``after``."""
    upload = await tus_upload(session, central_url, acquired.content, headers)
    body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(after)}
    return await post_json(session, f"{central_url}/v1/stations/{station.station_id}/items", body, headers)


async def answers_healthz_again(url: str) -> None:
    """After a control that stalled the loop: /healthz is answered once the stall is over. Its connection
    queues behind the stalled probe's, so the receiver has accepted (and now owns) that one before it stops:
    a stop racing the stale connection's accept left its transport unclosed (a ResourceWarning in the next
    test)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{url}/healthz") as response:
        assert response.status == 200, "the receiver did not answer /healthz after the stall ended"
