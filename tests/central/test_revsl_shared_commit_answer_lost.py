"""Review of branch storeleft (revsl): the shared tus store when a commit's answer is lost.

``SharedUploadWrite._commit_stored`` commits the request's stored parts in one PostgreSQL transaction.
When the COMMIT reaches the server but its answer never comes back (the database host or the network
fails just then: a failover, a PostgreSQL restart, a dropped NAT entry), psycopg raises, the handle
remembers the failure (``_failing_for_good``) and ``close()`` runs ``discard()``, which deletes the part
versions it still thinks pending. They are committed: ``tus_upload_parts`` points at them and HEAD
reports their end. The upload is stuck (the next PATCH cannot rebuild the running hash from a deleted
part; registration could not copy it either).

Real PostgreSQL and Ceph RGW, real HTTP, a real TCP relay between the receiver and PostgreSQL that
relays everything except, once armed, the server's answer to the COMMIT following the store's
``UPDATE tus_uploads SET committed`` (the COMMIT itself reaches the server, which commits: the relay
waits for its ReadyForQuery, then cuts both sides). Control: the relay not armed, same requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.service import RunningCentral, start_central
from tests.central.ceph import CephGateway
from tests.central.conftest import PG_PASSWORD_ENV, FakeStation
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.s3 import SECRET_ENV, new_bucket, raw_client

PART = PART_MB << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class CommitAnswerLost:
    """A TCP relay to PostgreSQL at ``port``. Once :attr:`armed`, the first connection that sends the tus
    store's ``UPDATE tus_uploads SET committed`` and then ``COMMIT`` gets its COMMIT relayed to the server,
    the server's answer read up to ReadyForQuery (so the transaction is committed) and never relayed, and
    both sockets closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.fired = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.listen_port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with _quiet():
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            with self._lock:
                self._sockets += [client, server]
            state = {"update": False, "drop": False}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(client, server, state), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        with _quiet():
            while data := client.recv(1 << 16):
                with self._lock:
                    if self.armed and b"UPDATE tus_uploads SET committed" in data:
                        state["update"] = True
                    elif self.armed and state["update"] and b"COMMIT" in data:
                        self.armed = False
                        self.fired += 1
                        state["drop"] = True
                server.sendall(data)
        with _quiet():
            server.shutdown(socket.SHUT_WR)

    def _down(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        seen = b""
        with _quiet():
            while data := server.recv(1 << 16):
                if state["drop"]:
                    seen += data
                    if _READY_FOR_QUERY in seen:  # the server committed and said so: never relayed
                        break
                    continue
                client.sendall(data)
        for sock in (client, server):
            with _quiet():
                sock.shutdown(socket.SHUT_RDWR)
            with _quiet():
                sock.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is not None and issubclass(kind, OSError)


@pytest.fixture
def relay(pg_database: PostgresDatabaseUnderTest) -> Iterator[CommitAnswerLost]:
    relay = CommitAnswerLost(pg_database.server.port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
async def central(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, ceph_gateway: CephGateway,
    monkeypatch: pytest.MonkeyPatch, relay: CommitAnswerLost,
) -> AsyncIterator[tuple[RunningCentral, ReceiverSite]]:
    monkeypatch.setenv(PG_PASSWORD_ENV, pg_database.password)
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    through_relay = dataclasses.replace(
        pg_database, server=dataclasses.replace(pg_database.server, port=relay.listen_port))
    site = ReceiverSite(tmp_path, through_relay, ceph_gateway, new_bucket(ceph_gateway))
    running = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        yield running, site
    finally:
        await running.stop()


async def _patch(session: aiohttp.ClientSession, url: str, headers: dict[str, str], offset: int,
                 body: bytes) -> tuple[int, str]:
    async with session.patch(url, data=io.BytesIO(body), headers={
        **TUS, **headers, "Upload-Offset": str(offset), "Content-Type": OCTET,
    }) as answer:
        return answer.status, await answer.text()


def _missing_parts(site: ReceiverSite, pg: PostgresDatabaseUnderTest, upload: str) -> list[str]:
    """The parts ``tus_upload_parts`` records for ``upload`` whose version is not in the bucket."""
    with pg.admin() as conn:
        rows = conn.execute("SELECT part, version_id FROM tus_upload_parts WHERE upload_id = %s "
                            "ORDER BY part", (upload,)).fetchall()
    listing = raw_client(site.gateway).list_object_versions(Bucket=site.bucket,
                                                            Prefix=f"uploads/{upload}/")
    there = {(v["Key"], v["VersionId"]) for v in listing.get("Versions", [])}
    return [f"part {n} version {v}" for n, v in rows
            if (f"uploads/{upload}/{int(str(n)):05d}", v) not in there]


@pytest.mark.parametrize("answer_lost", [True, False], ids=["commit-answer-lost", "control"])
async def test_shared_commit_whose_answer_is_lost_keeps_its_parts_and_the_upload_goes_on(
    central: tuple[RunningCentral, ReceiverSite], pg_database: PostgresDatabaseUnderTest,
    relay: CommitAnswerLost, answer_lost: bool,
) -> None:
    running, site = central
    station = FakeStation("station-revsl")
    running.parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    headers = {"X-Edge-Station": station.station_id}
    data = os.urandom(2 * PART)
    base = str(running.url)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{base}/v1/uploads", headers={**TUS, **headers,
                                                               "Upload-Length": str(len(data))}) as created:
            assert created.status == 201, await created.text()
            url = f"{base}/v1/uploads/{created.headers['Location'].rsplit('/', 1)[-1]}"
        upload = url.rsplit("/", 1)[-1]
        relay.armed = answer_lost
        status, text = await _patch(session, url, headers, 0, data[:PART])
        assert relay.fired == (1 if answer_lost else 0)
        # A retryable answer (the application answers 503 index_unavailable for the lost database).
        assert status == (503 if answer_lost else 204), text
        async with session.head(url, headers={**TUS, **headers}) as head:
            assert head.status == 200
            offset = int(head.headers["Upload-Offset"])
        assert offset == PART, "the lost answer's commit did happen: HEAD reports its end"
        assert _missing_parts(site, pg_database, upload) == [], \
            "a committed part's version was deleted (close() discarded it as uncommitted)"
        status, text = await _patch(session, url, headers, offset, data[offset:])
        assert status == 204, f"the upload cannot go on from HEAD's offset: {status} {text}"
    info = await asyncio.to_thread(running.parts.uploads.get, upload)
    assert info is not None and info.sha256 == hashlib.sha256(data).hexdigest()
