"""The S3 object store on a real Ceph RGW (tests/central/ceph.py): Object Lock required, every object locked
COMPLIANCE until the end of its retention class, legal holds for permanent evidence, retention extended and
never shortened, deletion and overwrite refused by the store and found by `edge verify`, an unreachable
bucket answered with 503 while the upload is kept."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from edge.central import s3_objects
from edge.central.app import READINESS
from edge.central.cli import add_central_parser
from edge.central.config import CentralConfig, ConfigError, load_central_config
from edge.central.lock_extensions import lock_extension_task
from edge.central.metrics import CentralMetrics
from edge.central.object_stores import open_object_store
from edge.central.objects import (
    FileIdentity,
    ObjectCorrupt,
    ObjectMismatch,
    ObjectStoreUnavailable,
    ReceivedContent,
    Retention,
)
from edge.central.registration import HTTP_STATUS, RejectCode, Rejection
from edge.central.retention import RetentionPolicy
from edge.central.s3_objects import S3ObjectStore
from edge.central.service import RunningCentral, start_central
from edge.central.verify import verify_central_store
from edge.cli import main as edge_main
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.problems import Problem
from edge.runtime.logs import record_fields
from tests.central.ceph import CephGateway
from tests.central.conftest import (
    CentralParts,
    FakeStation,
    central_config,
    enroll,
    free_port,
    get_json,
    make_central_parts,
    post_json,
    register_over_http,
    tls_session,
    tus_upload,
)
from tests.central.s3 import SECRET_ENV, new_bucket, raw_client, s3_objects_config, s3_store

PART = 5 << 20


@pytest.fixture
def gateway(ceph_gateway: CephGateway, monkeypatch: pytest.MonkeyPatch) -> CephGateway:
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    return ceph_gateway


@pytest.fixture
def store(gateway: CephGateway) -> S3ObjectStore:
    return s3_store(gateway)


def _upload(tmp_path: Path, data: bytes, name: str = "u.part") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _in(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def _config(tmp_path: Path, gateway: CephGateway, bucket: str) -> CentralConfig:
    return CentralConfig.model_validate({
        "central": {"id": "central-test", "store_dir": str(tmp_path / "central"),
                    "objects": s3_objects_config(gateway, bucket).model_dump(mode="json")},
    })


def test_a_bucket_without_object_lock_is_refused_at_start(tmp_path: Path, gateway: CephGateway) -> None:
    plain = new_bucket(gateway, object_lock=False)
    with pytest.raises(ConfigError, match=f"bucket {plain} .* has no Object Lock"):
        open_object_store(_config(tmp_path, gateway, plain))
    # Control: the same configuration on a bucket created with Object Lock starts.
    locked = new_bucket(gateway)
    assert isinstance(open_object_store(_config(tmp_path, gateway, locked)), S3ObjectStore)


def test_a_bucket_without_default_retention_is_warned_about(
    gateway: CephGateway, caplog: pytest.LogCaptureFixture
) -> None:
    bare = new_bucket(gateway)
    with caplog.at_level(logging.WARNING, logger="edge.central.s3_objects"):
        s3_store(gateway, bare)
    assert any("no default COMPLIANCE retention" in r.getMessage() for r in caplog.records)
    caplog.clear()
    defaulted = new_bucket(gateway)  # control: with a default rule, no warning
    raw_client(gateway).put_object_lock_configuration(Bucket=defaulted, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    with caplog.at_level(logging.WARNING, logger="edge.central.s3_objects"):
        s3_store(gateway, defaulted)
    assert not [r for r in caplog.records if "default" in r.getMessage()]


@pytest.mark.parametrize("size", [20_000, PART + 1], ids=["single", "multipart"])
def test_every_object_is_locked_and_its_deletion_refused_by_the_store(
    store: S3ObjectStore, gateway: CephGateway, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    sha = sha256_hex(data)
    until = _in(10)
    store.put_file(_upload(tmp_path, data), sha, Retention(until))
    mode, locked_until, held = store.retention_of(sha)
    assert mode == "COMPLIANCE" and locked_until is not None and not held
    assert abs((locked_until - until).total_seconds()) < 2
    version = raw_client(gateway).head_object(Bucket=store.bucket, Key=store.key_of(sha))["VersionId"]
    with pytest.raises(ClientError) as refused:  # the central's own keys, used outside the central
        raw_client(gateway).delete_object(Bucket=store.bucket, Key=store.key_of(sha), VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        raw_client(gateway).delete_object(Bucket=store.bucket, Key=store.key_of(sha), VersionId=version,
                                          BypassGovernanceRetention=True)
    assert store.verify(sha) is None and list(store.audit()) == []


def test_an_unlocked_version_is_deletable_the_control(store: S3ObjectStore, gateway: CephGateway) -> None:
    """What the lock prevents does happen without it: a version written without retention is deleted."""
    sha = sha256_hex(b"unlocked")
    client = raw_client(gateway)
    version = client.put_object(Bucket=store.bucket, Key=store.key_of(sha), Body=b"unlocked")["VersionId"]
    assert [f for f in store.audit() if "not locked" in f[1]]  # named by verification
    client.delete_object(Bucket=store.bucket, Key=store.key_of(sha), VersionId=version)
    assert not store.exists(sha)


def test_a_deletion_with_credentials_leaves_a_marker_that_verification_names(
    store: S3ObjectStore, gateway: CephGateway, tmp_path: Path
) -> None:
    data = b"evidence someone wants gone"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data), sha, Retention(_in(10)))
    client = raw_client(gateway)
    client.delete_object(Bucket=store.bucket, Key=store.key_of(sha))  # no version: a delete marker
    assert not store.exists(sha)
    problem = store.verify(sha) or ""
    assert "delete marker" in problem and "1 earlier version(s) remain" in problem
    assert any("delete marker" in what for _, what in store.audit())
    versions = client.list_object_versions(Bucket=store.bucket, Prefix=store.key_of(sha))["Versions"]
    kept = client.get_object(Bucket=store.bucket, Key=store.key_of(sha), VersionId=versions[0]["VersionId"])
    assert kept["Body"].read() == data  # the locked version is still there
    # A class change after the deletion still reaches the version that holds the evidence.
    store.retain(sha, Retention(_in(30), legal_hold=True))
    _, until, held = store.retention_of(sha, versions[0]["VersionId"])
    assert until is not None and until > _in(29) and held


def test_overwrite_attempts_are_refused_or_found(
    store: S3ObjectStore, gateway: CephGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"the original recording"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data, "a"), sha, Retention(_in(10)))
    # Through the central: other bytes under the name are refused before anything is sent, and logged.
    with caplog.at_level(logging.WARNING, logger="edge.central.s3_objects"), pytest.raises(ObjectMismatch):
        store.put_file(_upload(tmp_path, b"an edited recording", "b"), sha, Retention(_in(10)))
    assert any(sha in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    assert store.verify(sha) is None
    # Around the central: a PUT adds a version (the locked one stays); verification names the change.
    raw_client(gateway).put_object(Bucket=store.bucket, Key=store.key_of(sha), Body=b"an edited recording")
    assert "altered" in (store.verify(sha) or "")
    # And the central refuses to cover it up by storing the original again over it.
    with pytest.raises(ObjectCorrupt):
        store.put_file(_upload(tmp_path, data, "c"), sha, Retention(_in(10)))


def test_retention_is_extended_never_shortened(
    store: S3ObjectStore, gateway: CephGateway, tmp_path: Path
) -> None:
    data = b"kept"
    sha = sha256_hex(data)
    store.put_file(_upload(tmp_path, data), sha, Retention(_in(10)))
    store.retain(sha, Retention(_in(20)))
    _, until, _ = store.retention_of(sha)
    assert until is not None and until > _in(19)
    store.retain(sha, Retention(_in(5)))  # a shorter class later: the lock stays
    _, still, _ = store.retention_of(sha)
    assert still == until
    # The server itself refuses a shorter COMPLIANCE date, whoever asks.
    version = raw_client(gateway).head_object(Bucket=store.bucket, Key=store.key_of(sha))["VersionId"]
    with pytest.raises(ClientError) as refused:
        raw_client(gateway).put_object_retention(
            Bucket=store.bucket, Key=store.key_of(sha), VersionId=version,
            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": _in(1)})
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_permanent_evidence_is_under_a_legal_hold(store: S3ObjectStore, tmp_path: Path) -> None:
    permanent, ordinary = b"permanent", b"ordinary"
    store.put_file(_upload(tmp_path, permanent, "p"), sha256_hex(permanent),
                   Retention(_in(10), legal_hold=True))
    store.put_file(_upload(tmp_path, ordinary, "o"), sha256_hex(ordinary), Retention(_in(10)))
    assert store.retention_of(sha256_hex(permanent))[2] is True
    assert store.retention_of(sha256_hex(ordinary))[2] is False  # control
    store.retain(sha256_hex(permanent), Retention(_in(10)))  # a later ordinary class does not lift it
    assert store.retention_of(sha256_hex(permanent))[2] is True
    store.retain(sha256_hex(ordinary), Retention(_in(10), legal_hold=True))  # reclassified permanent
    assert store.retention_of(sha256_hex(ordinary))[2] is True


class _CountingHashlib:
    """The store module's ``hashlib``, counting the bytes it hashes with SHA-256 (botocore's own hashing,
    for request signing, is not the store's and is not counted)."""

    def __init__(self) -> None:
        self.sha256_bytes = 0
        self.md5 = hashlib.md5

    def sha256(self, data: bytes = b"") -> Any:
        counter = self

        class Counted:
            def __init__(self) -> None:
                self.inner = hashlib.sha256()
                self.update(data)

            def update(self, chunk: bytes) -> None:
                counter.sha256_bytes += len(chunk)
                self.inner.update(chunk)

            def hexdigest(self) -> str:
                return self.inner.hexdigest()

        return Counted()


@pytest.mark.parametrize("size", [20_000, 2 * PART + 7], ids=["single", "multipart"])
def test_the_receive_paths_hash_is_taken_so_the_central_hashes_once(
    store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    counting = _CountingHashlib()
    monkeypatch.setattr(s3_objects, "hashlib", counting)
    data = os.urandom(size)
    sha = sha256_hex(data)
    source = _upload(tmp_path, data, "vouched.part")
    vouched = ReceivedContent(sha, FileIdentity.of(source.stat()))
    store.put_file(source, sha, Retention(_in(1)), received=vouched)
    assert counting.sha256_bytes == 0 and not source.exists()
    # Control: without the vouch the same bytes are hashed, once, on the read that sends them.
    other = os.urandom(size)
    store.put_file(_upload(tmp_path, other, "plain.part"), sha256_hex(other), Retention(_in(1)))
    assert counting.sha256_bytes == size
    monkeypatch.undo()
    assert store.verify(sha) is None and store.verify(sha256_hex(other)) is None


@pytest.mark.parametrize("size", [20_000, PART + 7], ids=["single", "multipart"])
def test_a_file_changed_after_the_receive_path_hashed_it_is_hashed_and_refused(
    store: S3ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    data = os.urandom(size)
    sha = sha256_hex(data)
    changed = _upload(tmp_path, data, "changed.part")
    vouched = ReceivedContent(sha, FileIdentity.of(changed.stat()))
    with open(changed, "r+b") as stream:  # one byte, same size, modification time put back
        stream.seek(7)
        stream.write(b"X" if data[7:8] != b"X" else b"Y")
    os.utime(changed, ns=(vouched.identity.mtime_ns, vouched.identity.mtime_ns))
    with caplog.at_level(logging.WARNING, logger="edge.central.s3_objects"), \
            pytest.raises(ObjectMismatch) as caught:
        store.put_file(changed, sha, Retention(_in(1)), received=vouched)
    assert caught.value.found_sha256 == sha256_hex(changed.read_bytes())
    assert any("changed after its receive path hashed it" in r.getMessage() for r in caplog.records)
    assert changed.exists() and not store.exists(sha) and list(store.names()) == []


def test_a_file_changed_while_it_is_sent_is_never_completed_under_the_vouch(
    store: S3ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * PART + 7)
    sha = sha256_hex(data)
    source = _upload(tmp_path, data, "racing.part")
    vouched = ReceivedContent(sha, FileIdentity.of(source.stat()))
    real_upload_part = store.client.upload_part
    sent_parts: list[int] = []
    written_over = [bytes([data[-3] ^ 0xFF])]  # what the writer puts in the last part

    def upload_part_then_change_the_file(**arguments: Any) -> Any:
        sent_parts.append(arguments["PartNumber"])
        if len(sent_parts) == 1:  # while the first part is sent, another writer touches the file
            with open(source, "r+b") as stream:
                stream.seek(len(data) - 3)
                stream.write(written_over[0])
        return real_upload_part(**arguments)

    monkeypatch.setattr(store.client, "upload_part", upload_part_then_change_the_file)
    with caplog.at_level(logging.WARNING, logger="edge.central.s3_objects"), pytest.raises(ObjectMismatch):
        store.put_file(source, sha, Retention(_in(1)), received=vouched)
    assert any("changed while it was sent" in r.getMessage() for r in caplog.records)
    assert sent_parts == [1, 2, 3, 1, 2, 3]  # abandoned, then sent again hashed: refused
    assert not store.exists(sha) and source.exists()
    # Control: the same change that leaves the bytes as they were (a byte written over with itself) moves
    # the change time just the same; the second send, hashed, is accepted.
    source.write_bytes(data)
    vouched = ReceivedContent(sha, FileIdentity.of(source.stat()))
    sent_parts.clear()
    written_over[0] = data[-3:-2]
    store.put_file(source, sha, Retention(_in(1)), received=vouched)
    assert sent_parts == [1, 2, 3, 1, 2, 3] and store.verify(sha) is None


# -- through the registrar -----------------------------------------------------------------------------


@pytest.fixture
def s3_parts(tmp_path: Path, store: S3ObjectStore) -> Iterator[CentralParts]:
    built = make_central_parts(tmp_path / "central", objects=store)
    built.registrar.retention = RetentionPolicy({"6-months": 183, "10-years": 3660}, "6-months",
                                                frozenset({"permanent"}))
    yield built
    built.index.close()


async def _register(parts: CentralParts, station: FakeStation, content: bytes) -> tuple[str, str]:
    acquired = station.acquire(content)
    after = parts.index.ledger_head(station.station_id)[0]
    upload = parts.upload(station.station_id, content)
    body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(after)}
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    return acquired.item, acquired.sha256


async def _tag(parts: CentralParts, station: FakeStation, item: str, retention: str) -> None:
    after = parts.index.ledger_head(station.station_id)[0]
    station.tag(item, {"retention": retention})
    await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id,
                                         station.segment(after))


async def test_registration_locks_for_the_class_and_tags_extend_it(
    s3_parts: CentralParts, store: S3ObjectStore, station: FakeStation
) -> None:
    enroll(s3_parts.index, station)
    item, sha = await _register(s3_parts, station, os.urandom(PART + 3))  # manifest class: 6-months
    mode, until, held = store.retention_of(sha)
    assert mode == "COMPLIANCE" and until is not None and _in(182) < until < _in(184) and not held
    await _tag(s3_parts, station, item, "10-years")
    _, longer, _ = store.retention_of(sha)
    assert longer is not None and longer > _in(3650)
    await _tag(s3_parts, station, item, "6-months")  # back to a shorter class: never shortened
    assert store.retention_of(sha)[1] == longer
    await _tag(s3_parts, station, item, "permanent")
    assert store.retention_of(sha)[2] is True


async def test_an_unreachable_bucket_refuses_registration_with_503_and_keeps_the_upload(
    tmp_path: Path, gateway: CephGateway, station: FakeStation
) -> None:
    # A bucket that answered at start, then the network to it fails: nothing listens on this port.
    config = s3_objects_config(gateway, new_bucket(gateway), endpoint=f"http://127.0.0.1:{free_port()}",
                               max_attempts=1, connect_timeout_s=2)
    unreachable = S3ObjectStore(config, gateway.secret_access_key)
    parts = make_central_parts(tmp_path / "central", objects=unreachable)
    try:
        enroll(parts.index, station)
        acquired = station.acquire(b"evidence while the bucket is down")
        upload = parts.upload(station.station_id, acquired.content)
        body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}
        with pytest.raises(Rejection) as caught:
            await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
        assert caught.value.code is RejectCode.STORE_UNAVAILABLE
        assert HTTP_STATUS[caught.value.code] == 503 and caught.value.refusal is None  # not final
        assert parts.uploads.get(upload) is not None  # kept for the retry
        assert parts.index.item(acquired.item) is None
        with pytest.raises(ObjectStoreUnavailable):
            unreachable.check_bucket()
        # Control: the same registration on the reachable bucket is accepted.
        parts.registrar.objects = s3_store(gateway)
        registered = await parts.registrar.register_item(parts.caller(station.station_id), station.station_id,
                                                         body)
        assert not registered.replay and parts.uploads.get(upload) is None
    finally:
        parts.index.close()


async def test_edge_verify_names_an_object_deleted_with_credentials(
    s3_parts: CentralParts, store: S3ObjectStore, gateway: CephGateway, station: FakeStation
) -> None:
    enroll(s3_parts.index, station)
    _, sha = await _register(s3_parts, station, b"an item the verifier must account for")
    _, other = await _register(s3_parts, station, b"a second item")
    key = s3_parts.signing_key.public_key()
    assert verify_central_store(s3_parts.root, central_public_key=key, objects=store) == []  # control
    raw_client(gateway).delete_object(Bucket=store.bucket, Key=store.key_of(sha))
    problems = verify_central_store(s3_parts.root, central_public_key=key, objects=store)
    named = [p for p in problems if p.where == f"object {sha}"]
    assert named and any("delete marker" in p.what for p in named), problems
    assert not [p for p in problems if other in p.where]


class _Proxy:
    """A TCP relay to the gateway that a test can cut, as a failed link or a gateway down. It runs its own
    event loop in a thread: the central asks the bucket with blocking calls (at start, from its loop)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="s3-proxy", daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def start(self, port: int = 0) -> int:
        async def listen() -> int:
            self.server = await asyncio.start_server(self._relay, "127.0.0.1", port)
            bound: int = self.server.sockets[0].getsockname()[1]
            return bound

        return asyncio.run_coroutine_threadsafe(listen(), self.loop).result(30)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(1 << 16):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for writer in self.writers:
                writer.close()
            self.writers.clear()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)

    def stop(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


async def test_over_http_a_bucket_down_answers_503_and_the_retry_is_accepted(
    tmp_path: Path, gateway: CephGateway, station: FakeStation
) -> None:
    proxy = _Proxy(int(gateway.endpoint.rsplit(":", 1)[1]))
    port = proxy.start()
    config = central_config(tmp_path / "central-store", dev=True)
    objects = s3_objects_config(gateway, new_bucket(gateway), endpoint=f"http://127.0.0.1:{port}",
                                max_attempts=1, connect_timeout_s=2, read_timeout_s=10)
    config = config.model_copy(update={"central": config.central.model_copy(update={"objects": objects})})
    running: RunningCentral | None = None
    try:
        running = await start_central(config, signing_key=StationKey.generate())
        running.parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        headers = {"X-Edge-Station": station.station_id}
        url = str(running.url)
        async with aiohttp.ClientSession() as session:
            first = station.acquire(b"accepted while the bucket is up")
            status, _ = await register_over_http(session, url, station, first, headers)
            assert status == 201  # control: the same path with the bucket reachable
            running.app[READINESS].max_age_s = 0.0  # every probe answered afresh
            status, ready = await get_json(session, f"{url}/readyz")
            assert status == 200 and ready["checks"]["objects"] == "ok", ready
            after = running.parts.index.ledger_head(station.station_id)[0]
            proxy.cut()
            second = station.acquire(b"offered while the bucket is down")
            upload = await tus_upload(session, url, second.content, headers)
            body = {"upload": upload, "manifest": second.manifest, "ledger": station.segment(after)}
            items = f"{url}/v1/stations/{station.station_id}/items"
            status, answer = await post_json(session, items, body, headers)
            assert status == 503 and answer["error"] == "store_unavailable", answer
            assert "refusal" not in answer  # not final: the station keeps the item and retries
            assert running.parts.index.item(second.item) is None
            status, ready = await get_json(session, f"{url}/readyz")  # a load balancer sees it too
            assert status == 503 and ready["checks"]["objects"] == "unreachable", ready
            proxy.start(port)  # the link is back
            status, answer = await post_json(session, items, body, headers)
            assert status == 201, answer  # the kept upload, registered on retry
        assert running.parts.objects.verify(second.sha256) is None
    finally:
        if running is not None:
            await running.stop()
        proxy.stop()


def _run_central_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge")
    add_central_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["central", *argv])
    status: int = args.func(args)
    return status


async def test_edge_verify_of_the_configuration_names_an_object_deleted_with_credentials(
    tmp_path: Path, gateway: CephGateway, station: FakeStation, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = new_bucket(gateway)
    config_file = tmp_path / "central.toml"
    config_file.write_text(
        f'[central]\nid = "central-test"\nstore_dir = "{tmp_path / "store"}"\n'
        f'objects = {{type = "s3", endpoint = "{gateway.endpoint}", bucket = "{bucket}", region = "default", '
        f'access_key_id = "{gateway.access_key_id}", secret_access_key = "env:{SECRET_ENV}"}}\n'
        f'[server]\nlisten = "127.0.0.1"\nport = {free_port()}\nnames = ["localhost", "127.0.0.1"]\n',
        encoding="utf-8")
    assert _run_central_cli("init", "--config", str(config_file)) == 0
    pub = tmp_path / "station.pub"
    pub.write_bytes(station.key.public_pem())
    bundle = tmp_path / "bundle"
    assert _run_central_cli("enroll", station.station_id, "--config", str(config_file), "--signing-key",
                            str(pub), "--out", str(bundle)) == 0
    running = await start_central(load_central_config(config_file))
    try:
        async with tls_session(bundle) as session:
            kept = station.acquire(b"kept clip " * 3000)
            status, doc = await register_over_http(session, running.url, station, kept)
            assert status == 201, doc
            accepted_to = station.ledger.head()[0]
            gone = station.acquire(b"clip someone deletes " * 3000)
            status, doc = await register_over_http(session, running.url, station, gone, after=accepted_to)
            assert status == 201, doc
    finally:
        await running.stop()
    local = tmp_path / "store" / "objects"
    assert not local.exists() or not any(local.iterdir())  # the content is in the bucket only
    capsys.readouterr()
    assert edge_main(["verify", str(config_file)]) == 0  # control: everything accounted for
    raw_client(gateway).delete_object(Bucket=bucket, Key=f"objects/{gone.sha256}")  # the latest version
    capsys.readouterr()
    assert edge_main(["verify", str(config_file)]) == 1
    out, err = capsys.readouterr()
    failures = [line for line in out.splitlines() if gone.sha256 in line]
    assert failures and any("delete marker" in line for line in failures), out
    assert kept.sha256 not in out
    assert gateway.secret_access_key not in out + err


# -- a class change while the bucket is out of reach (issue 13) -----------------------------------------


async def test_a_class_change_while_the_bucket_is_out_of_reach_is_kept_retried_and_named(
    tmp_path: Path, gateway: CephGateway, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = _Proxy(int(gateway.endpoint.rsplit(":", 1)[1]))
    port = proxy.start()
    bucket = new_bucket(gateway)
    relayed = S3ObjectStore(s3_objects_config(gateway, bucket, endpoint=f"http://127.0.0.1:{port}",
                                              max_attempts=1, connect_timeout_s=2, read_timeout_s=10),
                            gateway.secret_access_key)
    direct = s3_store(gateway, bucket)  # the test's own view of the bucket, never cut
    parts = make_central_parts(tmp_path / "central", objects=relayed)
    parts.registrar.retention = RetentionPolicy({"6-months": 183, "10-years": 3660}, "6-months",
                                                frozenset({"permanent"}))
    key = parts.signing_key.public_key()

    def verified() -> list[Problem]:
        return verify_central_store(parts.root, central_public_key=key, objects=direct,
                                    retention=parts.registrar.retention)

    metrics = CentralMetrics()
    metrics.watch_lock_extensions(parts.index.pending_lock_count)
    try:
        enroll(parts.index, station)
        item, sha = await _register(parts, station, b"evidence whose class changes")
        assert verified() == []
        proxy.cut()
        with caplog.at_level(logging.ERROR, logger="edge.central.lock_extensions"):
            await _tag(parts, station, item, "10-years")  # the ledger is accepted all the same
        assert parts.index.ledger_head(station.station_id)[0] == station.ledger.head()[0]
        assert any(record_fields(r).get("event") == "retention_not_extended" for r in caplog.records)
        (pending,) = parts.index.pending_locks()
        assert (pending.item, pending.sha256, pending.attempts) == (item, sha, 1) and pending.last_error
        assert pending.retention.until > _in(3650)
        assert b"edge_central_lock_extensions_pending 1.0" in metrics.exposition()
        _, until, _ = direct.retention_of(sha)
        assert until is not None and until < _in(184)  # still the 6-month lock
        # `edge verify` names the object whose lock ends before its class requires, and the pending wish.
        problems = verified()
        named = [p for p in problems if p.where == f"object {sha}"]
        assert named and "'10-years' requires until" in named[0].what, problems
        assert "pending since" in named[0].what and "1 failed attempt" in named[0].what
        # A retry while the bucket is still out of reach keeps the wish (and counts the attempt).
        assert await parts.registrar.lock_extender().retry_pending() == 1
        assert parts.index.pending_locks()[0].attempts == 2
        # The bucket back: the periodic task (at start, then every interval) gets the lock.
        proxy.start(port)
        app = web.Application()
        app.cleanup_ctx.append(lock_extension_task(parts.registrar.lock_extender, 0.2))
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            for _ in range(300):
                if parts.index.pending_lock_count() == 0:
                    break
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()
        assert parts.index.pending_locks() == []
        assert b"edge_central_lock_extensions_pending 0.0" in metrics.exposition()
        _, extended, _ = direct.retention_of(sha)
        assert extended is not None and extended > _in(3650)
        assert verified() == []
    finally:
        parts.index.close()
        proxy.stop()


async def test_verify_names_a_lock_shorter_than_its_class_when_no_extension_was_asked(
    s3_parts: CentralParts, store: S3ObjectStore, station: FakeStation
) -> None:
    """The control for the check itself: a lock that falls short without any wish on record (a central
    that never asked, or a row removed by hand) is named too."""
    enroll(s3_parts.index, station)
    _, sha = await _register(s3_parts, station, b"evidence locked for six months")
    key = s3_parts.signing_key.public_key()
    policy = s3_parts.registrar.retention
    assert verify_central_store(s3_parts.root, central_public_key=key, objects=store, retention=policy) == []
    longer = RetentionPolicy({"6-months": 3660}, "6-months", frozenset({"permanent"}))  # the class grew
    problems = verify_central_store(s3_parts.root, central_public_key=key, objects=store, retention=longer)
    named = [p for p in problems if p.where == f"object {sha}"]
    assert named and "no extension is pending" in named[0].what, problems
