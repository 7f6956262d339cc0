"""The central over real HTTP on 127.0.0.1: mutual TLS identities, station endpoints, the Merkle log."""

from __future__ import annotations

import asyncio
import io
import ssl
from pathlib import Path

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.custody.ledger import GENESIS_PREV
from edge.custody.merkle import verify_consistency
from edge.custody.receipt import TreeHead, verify_receipt, verify_tree_head
from edge.custody.witness import verify_witnessed_head
from tests.central.conftest import (
    FakeStation,
    HttpCentral,
    enroll,
    get_json,
    post_json,
    register_over_http,
    start_http_central,
    tls_session,
    tus_upload,
)


def _station_headers(station: FakeStation) -> dict[str, str]:
    return {DEV_STATION_HEADER: station.station_id}


# -- mutual TLS ------------------------------------------------------------------------------------


async def test_station_over_mutual_tls_gets_a_receipt(tls_central_on: HttpCentral, station: FakeStation
                                                      ) -> None:
    """On each backend (SQLite and PostgreSQL)."""
    tls_central = tls_central_on
    bundle = tls_central.enroll_tls(station)
    acquired = station.acquire(b"mp4 bytes" * 10_000)
    station_url = f"{tls_central.url}/v1/stations/{station.station_id}"
    async with tls_session(bundle) as session:
        status, head = await get_json(session, f"{station_url}/ledger/head")
        assert status == 200
        assert (head["seq"], head["hash"], head["checkpoint"], head["witnessed_head"]) == (
            0, GENESIS_PREV, None, None
        ), "nothing to witness before the first entry"
        assert verify_tree_head(head["tree_head"], tls_central.central_public_key) == []
        status, doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201, doc
        receipt = doc["receipt"]
        assert verify_receipt(receipt, tls_central.central_public_key, expected_item=acquired.item,
                              expected_sha256=acquired.sha256, expected_station=station.station_id) == []
        # The receipt carries the station's ledger head as the central accepted it, signed.
        witnessed = receipt["witnessed_head"]
        assert receipt["format"] == "evidence-edge/receipt/2"
        assert (witnessed["station"], witnessed["seq"], witnessed["hash"]) == (
            station.station_id, *station.ledger.head()
        )
        # Replay: same leaf, 200.
        upload = await tus_upload(session, tls_central.url, acquired.content)
        status, again = await post_json(session, f"{station_url}/items",
                                        {"upload": upload, "manifest": acquired.manifest, "ledger": None})
        assert status == 200 and again["receipt"]["leaf"] == receipt["leaf"]
        status, head = await get_json(session, f"{station_url}/ledger/head")
        assert (head["seq"], head["hash"]) == station.ledger.head()
        assert head["checkpoint"]["seq"] == head["seq"]
        assert (head["witnessed_head"]["seq"], head["witnessed_head"]["hash"]) == station.ledger.head()
        assert verify_witnessed_head(head["witnessed_head"], tls_central.central_public_key,
                                     expected_station=station.station_id) == []


async def test_certificate_of_an_unenrolled_station(tls_central: HttpCentral, station: FakeStation) -> None:
    bundle = tls_central.enroll_tls(station)
    # The CA issued the certificate, but the index has no such station (enrolment half-done, or wiped).
    tls_central.index.conn.execute("DELETE FROM stations WHERE station = ?", (station.station_id,))
    async with tls_session(bundle) as session:
        status, doc = await get_json(session, f"{tls_central.url}/v1/stations/st-0001/ledger/head")
        assert status == 403 and doc["error"] == "unknown_station"
        async with session.post(f"{tls_central.url}/v1/uploads", headers={"Tus-Resumable": "1.0.0",
                                                                         "Upload-Length": "1"}) as response:
            assert response.status == 403
            assert (await response.json())["error"] == "unknown_station"
    rows = tls_central.index.rejections(station.station_id)
    assert [r["code"] for r in rows] == ["unknown_station", "unknown_station"]


async def test_revoked_station_is_refused(tls_central_on: HttpCentral, station: FakeStation) -> None:
    tls_central = tls_central_on  # on each backend
    bundle = tls_central.enroll_tls(station)
    tls_central.store_index.revoke_station(station.station_id, "recorder bay stolen")
    acquired = station.acquire(b"x")
    async with tls_session(bundle) as session:
        body = {"upload": "0" * 32, "manifest": acquired.manifest, "ledger": None}
        status, doc = await post_json(session, f"{tls_central.url}/v1/stations/st-0001/items", body)
    assert status == 403 and doc["error"] == "station_revoked"
    assert "recorder bay stolen" in doc["detail"]
    assert tls_central.store_index.rejections(station.station_id)[-1]["code"] == "station_revoked"


async def test_old_certificate_stops_working_after_re_enrolment(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    old = tls_central.enroll_tls(station)
    new = tls_central.enroll_tls(station)
    url = f"{tls_central.url}/v1/stations/{station.station_id}/ledger/head"
    async with tls_session(old) as session:
        status, doc = await get_json(session, url)
    assert status == 403 and doc["error"] == "station_revoked" and "re-enrolment" in doc["detail"]
    async with tls_session(new) as session:
        status, _ = await get_json(session, url)
    assert status == 200


async def test_station_cannot_act_under_another_id_over_tls(
    tls_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    bundle = tls_central.enroll_tls(station)
    tls_central.enroll_tls(other_station)
    acquired = other_station.acquire(b"someone else's")
    async with tls_session(bundle) as session:
        status, doc = await get_json(
            session, f"{tls_central.url}/v1/stations/{other_station.station_id}/ledger/head")
        assert status == 403 and doc["error"] == "wrong_station"
        status, doc = await post_json(session, f"{tls_central.url}/v1/stations/st-0002/ledger",
                                      other_station.segment(0))
        assert status == 403 and doc["error"] == "wrong_station"
    assert tls_central.index.ledger_head(other_station.station_id) == (0, GENESIS_PREV)
    assert acquired.item not in {r["item"] for r in tls_central.index.rejections()}


async def test_roles_do_not_cross(tls_central: HttpCentral, station: FakeStation) -> None:
    station_bundle = tls_central.enroll_tls(station)
    reader_bundle = tls_central.enroll_reader_tls("auditor-1")
    async with tls_session(reader_bundle) as session:
        status, doc = await get_json(session, f"{tls_central.url}/v1/stations/st-0001/ledger/head")
        assert status == 403 and doc["error"] == "forbidden" and "OU='auditor'" in doc["detail"]
        status, doc = await get_json(session, f"{tls_central.url}/v1/log/tree-head")
        assert status == 200 and doc["tree_size"] == 0
    async with tls_session(station_bundle) as session:
        status, doc = await get_json(session, f"{tls_central.url}/v1/items")
        assert status == 403 and doc["error"] == "forbidden"


async def test_a_client_without_certificate_is_refused(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    """The handshake completes (load balancers probe /healthz without a certificate); the request is
    refused before any handler runs (every route: tests/central/test_health_metrics.py)."""
    bundle = tls_central.enroll_tls(station)
    context = ssl.create_default_context(cafile=str(bundle / "ca.crt"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        status, doc = await get_json(session, f"{tls_central.url}/v1/log/tree-head")
    assert status == 401 and doc["error"] == "unauthenticated"
    # Control: with the station's certificate the same request is answered.
    async with tls_session(bundle) as session:
        status, doc = await get_json(session, f"{tls_central.url}/v1/log/tree-head")
    assert status == 200 and "tree_size" in doc


# -- development mode and plain HTTP behaviour ----------------------------------------------------------


async def test_dev_mode_identity_header(dev_central: HttpCentral, station: FakeStation) -> None:
    assert dev_central.url.startswith("http://")
    enroll(dev_central.index, station)
    acquired = station.acquire(b"dev content")
    async with aiohttp.ClientSession() as session:
        status, doc = await get_json(session, f"{dev_central.url}/v1/stations/st-0001/ledger/head")
        assert status == 401 and doc["error"] == "unauthenticated"
        status, doc = await register_over_http(session, dev_central.url, station, acquired,
                                               _station_headers(station))
        assert status == 201, doc
        status, doc = await get_json(session, f"{dev_central.url}/v1/stations/x/ledger/head",
                                     {DEV_STATION_HEADER: "not enrolled"})
        assert status == 401 and "X-Edge-Station" in doc["detail"]
        status, doc = await get_json(session, f"{dev_central.url}/v1/stations/nobody/ledger/head",
                                     {DEV_STATION_HEADER: "nobody"})
        assert status == 403 and doc["error"] == "unknown_station"


async def test_rejections_over_http_carry_code_and_detail(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    enroll(dev_central.index, station)
    enroll(dev_central.index, other_station)
    headers = _station_headers(station)
    url = f"{dev_central.url}/v1/stations/{station.station_id}"
    acquired = station.acquire(b"the recording")
    async with aiohttp.ClientSession() as session:
        wrong = await tus_upload(session, dev_central.url, b"not the recording", headers)
        status, doc = await post_json(session, f"{url}/items",
                                      {"upload": wrong, "manifest": acquired.manifest,
                                       "ledger": station.segment(0)}, headers)
        assert status == 422 and doc["error"] == "content_mismatch" and acquired.sha256 in doc["detail"]
        theirs = await tus_upload(session, dev_central.url, acquired.content,
                                  _station_headers(other_station))
        body = {"upload": theirs, "manifest": acquired.manifest, "ledger": None}
        status, doc = await post_json(session, f"{url}/items", body, headers)
        assert status == 404 and doc["error"] == "upload_not_found"
        partial = await tus_upload(session, dev_central.url, acquired.content[:3], headers,
                                   length=len(acquired.content))
        body = {"upload": partial, "manifest": acquired.manifest, "ledger": None}
        status, doc = await post_json(session, f"{url}/items", body, headers)
        assert status == 409 and doc["error"] == "upload_incomplete"
        segment = station.segment(0)  # already accepted with the first request: a replay, but forged
        segment["checkpoint"]["signature"] = "AAAA" + segment["checkpoint"]["signature"][4:]
        status, doc = await post_json(session, f"{url}/ledger", segment, headers)
        assert status == 422 and doc["error"] == "bad_checkpoint"
    codes = [r["code"] for r in dev_central.index.rejections(station.station_id)]
    assert codes == ["content_mismatch", "upload_not_found", "upload_incomplete", "bad_checkpoint"]


async def test_bodies_and_routes_are_checked(dev_central: HttpCentral, station: FakeStation) -> None:
    enroll(dev_central.index, station)
    headers = {**_station_headers(station), "Content-Type": "application/json"}
    url = f"{dev_central.url}/v1/stations/{station.station_id}"
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/ledger", data=b"{not json", headers=headers) as response:
            doc = await response.json()
            assert response.status == 400 and doc["error"] == "bad_request"
        async with session.post(f"{url}/ledger", data=b'{"a":1,"a":2}', headers=headers) as response:
            assert response.status == 400 and "twice" in (await response.json())["detail"]
        big = io.BytesIO(b'{"entries":[' + b" " * (33 << 20) + b"]}")
        async with session.post(f"{url}/items", data=big, headers=headers) as response:
            doc = await response.json()
            assert response.status == 413 and doc["error"] == "too_large"
        status, doc = await get_json(session, f"{dev_central.url}/v1/nowhere")
        assert status == 404 and doc["error"] == "not_found"
        async with session.delete(f"{url}/ledger", headers=headers) as response:
            assert response.status == 405 and (await response.json())["error"] == "http_405"
    assert {r["code"] for r in dev_central.index.rejections(station.station_id)} == {"bad_request",
                                                                                       "too_large"}


async def test_merkle_log_endpoints(dev_central_on: HttpCentral, station: FakeStation) -> None:
    dev_central = dev_central_on  # on each backend
    enroll(dev_central.store_index, station)
    headers = _station_headers(station)
    key = dev_central.central_public_key
    heads: list[TreeHead] = []
    items: list[str] = []
    async with aiohttp.ClientSession() as session:
        after = 0
        for n in range(5):
            acquired = station.acquire(f"item {n}".encode())
            status, _ = await register_over_http(session, dev_central.url, station, acquired, headers,
                                                 after=after)
            assert status == 201
            after = station.ledger.head()[0]
            items.append(acquired.item)
            status, doc = await get_json(session, f"{dev_central.url}/v1/log/tree-head", headers)
            head = TreeHead.from_dict(doc)
            assert verify_tree_head(head, key) == [] and head.tree_size == n + 1
            heads.append(head)
        first, second = heads[1], heads[4]
        status, doc = await get_json(
            session, f"{dev_central.url}/v1/log/consistency?first=2&second=5", {DEV_READER_HEADER: "aud"})
        assert status == 200
        proof = [bytes.fromhex(h) for h in doc["proof"]]
        assert verify_consistency(2, 5, first.root, second.root, proof)
        log_url = f"{dev_central.url}/v1/log"
        status, doc = await get_json(session, f"{log_url}/consistency?first=4&second=9", headers)
        assert status == 400 and doc["error"] == "bad_request"
        status, doc = await get_json(session, f"{log_url}/consistency?first=x&second=1", headers)
        assert status == 400
        status, doc = await get_json(session, f"{dev_central.url}/v1/log/inclusion?item={items[0]}", headers)
        assert status == 200 and verify_receipt(doc, key, expected_item=items[0]) == []
        assert doc["tree_size"] == 5
        status, doc = await get_json(
            session, f"{dev_central.url}/v1/log/inclusion?item=00000000-0000-0000-0000-000000000000", headers)
        assert status == 404


async def test_a_stalled_json_body_is_cut_off(tmp_path: Path, station: FakeStation) -> None:
    central = await start_http_central(tmp_path, dev=True, chunk_timeout_s=0.3)
    try:
        enroll(central.index, station)
        host, port = "127.0.0.1", central.running.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"POST /v1/stations/{station.station_id}/ledger HTTP/1.1\r\nHost: {host}\r\n"
            f"{DEV_STATION_HEADER}: {station.station_id}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{\"entries\": [".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(4096)
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"request_timeout" in answer and b"stalled" in answer
        assert central.index.rejections(station.station_id)[-1]["code"] == "request_timeout"
    finally:
        await central.running.stop()


async def test_the_checkpoint_is_a_c2sp_signed_note_of_the_latest_tree_head(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    from edge.custody.checkpoint_note import open_note, parse_checkpoint

    enroll(dev_central.index, station)
    headers = _station_headers(station)
    async with aiohttp.ClientSession() as session:
        for n in range(3):
            acquired = station.acquire(f"checkpointed {n}".encode())
            status, _ = await register_over_http(session, dev_central.url, station, acquired, headers,
                                                 after=station.ledger.head()[0] - 3 if n else 0)
            assert status == 201
        async with session.get(f"{dev_central.url}/v1/log/checkpoint", headers=headers) as response:
            assert response.status == 200 and response.content_type == "text/plain"
            note = await response.read()
        status, doc = await get_json(session, f"{dev_central.url}/v1/log/tree-head", headers)
    head = TreeHead.from_dict(doc)
    text, signatures = open_note(note, head.origin, dev_central.central_public_key)
    checkpoint = parse_checkpoint(text)
    assert (checkpoint.origin, checkpoint.tree_size, checkpoint.root) == (head.origin, 3, head.root)
    assert [s.name for s in signatures] == [head.origin]
