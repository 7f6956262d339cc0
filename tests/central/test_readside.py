"""The read side: queries with a cursor, content with its digest, manifest, history, receipt; every read
logged, and a read that cannot be logged refused."""

from __future__ import annotations

import base64
import os
import sqlite3
from typing import Any

import aiohttp
import pytest

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.index import ItemQuery
from edge.central.readside import parse_item_query
from edge.central.registration import Rejection
from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.receipt import verify_receipt
from tests.central.conftest import (
    Acquired,
    FakeStation,
    HttpCentral,
    enroll,
    get_json,
    register_over_http,
    tls_session,
)

READER = {DEV_READER_HEADER: "auditor-7"}


async def _populate(central: HttpCentral, station: FakeStation, other: FakeStation) -> list[Acquired]:
    """Six items: two stations, two officers, three devices, two cases, acquired on six days."""
    enroll(central.index, station)
    enroll(central.index, other)
    accepted: list[Acquired] = []
    async with aiohttp.ClientSession() as session:
        for n in range(6):
            source = station if n < 4 else other
            acquired = source.acquire(
                f"recording {n}".encode() * 100,
                case_number="CASE-A" if n % 2 == 0 else "CASE-B",
                officer_no="100001" if n < 3 else "100002",
                device_serial=f"DSJ-{n % 3}",
                acquired_utc=f"2024-05-0{n + 1}T10:00:00.000000Z",
            )
            after = central.index.ledger_head(source.station_id)[0]
            status, doc = await register_over_http(session, central.url, source, acquired,
                                                   {DEV_STATION_HEADER: source.station_id}, after=after)
            assert status == 201, doc
            accepted.append(acquired)
    return accepted


async def _items(session: aiohttp.ClientSession, url: str, query: str) -> tuple[list[str], Any]:
    status, doc = await get_json(session, f"{url}/v1/items?{query}", READER)
    assert status == 200, doc
    return [summary["item"] for summary in doc["items"]], doc["next"]


async def test_queries_by_case_officer_device_station_time_with_cursor(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    items = [a.item for a in await _populate(dev_central, station, other_station)]
    url = dev_central.url
    async with aiohttp.ClientSession() as session:
        assert (await _items(session, url, "case=CASE-A"))[0] == [items[0], items[2], items[4]]
        assert (await _items(session, url, "officer=100002"))[0] == items[3:]
        assert (await _items(session, url, "device=DSJ-1"))[0] == [items[1], items[4]]
        assert (await _items(session, url, "station=st-0002"))[0] == items[4:]
        assert (await _items(session, url, "from=2024-05-02&to=2024-05-04T00:00:00Z"))[0] == items[1:3]
        # 2024-05-03T10:00Z is 18:00 in Beijing; an offset is honoured.
        assert (await _items(session, url, "from=2024-05-03T18:00:00%2B08:00"))[0] == items[2:]
        assert (await _items(session, url, "case=CASE-B&officer=100001"))[0] == [items[1]]
        page, cursor = await _items(session, url, "limit=4")
        assert page == items[:4] and cursor is not None
        rest, end = await _items(session, url, f"limit=4&after={cursor}")
        assert rest == items[4:] and end is None
    log = dev_central.index.access_log()
    assert len(log) == 9 and {row["reader"] for row in log} == {"auditor-7"}
    assert all(row["what"] == "query" and row["remote"] == "127.0.0.1" for row in log)
    assert log[0]["query"] == "case=CASE-A"


async def test_tags_change_what_a_case_query_finds(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    accepted = await _populate(dev_central, station, other_station)
    station.tag(accepted[1].item, {"case_number": "CASE-A"})
    async with aiohttp.ClientSession() as session:
        after = dev_central.index.ledger_head(station.station_id)[0]
        async with session.post(f"{dev_central.url}/v1/stations/{station.station_id}/ledger",
                                data=canonical_json(station.segment(after)),
                                headers={DEV_STATION_HEADER: station.station_id}) as response:
            assert response.status == 200
        found, _ = await _items(session, dev_central.url, "case=CASE-A")
        assert accepted[1].item in found
        history_url = f"{dev_central.url}/v1/items/{accepted[1].item}/history"
        status, doc = await get_json(session, history_url, READER)
        assert status == 200 and doc["case"]["case_number"] == "CASE-A"
        assert [h["source"] for h in doc["history"]] == ["manifest", "ledger"]
        assert doc["history"][0]["changes"]["case_number"] == "CASE-B"


async def test_content_manifest_item_and_receipt(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    accepted = await _populate(dev_central, station, other_station)
    target = accepted[2]
    base = f"{dev_central.url}/v1/items/{target.item}"
    key = dev_central.central_public_key
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/content", headers=READER) as response:
            assert response.status == 200
            body = await response.read()
            digest = base64.b64encode(bytes.fromhex(target.sha256)).decode()
            assert response.headers["Repr-Digest"] == f"sha-256=:{digest}:"
            assert response.headers["Digest"] == f"sha-256={digest}"
            assert target.item in response.headers["Content-Disposition"]
        assert body == target.content and sha256_hex(body) == target.sha256
        async with session.get(f"{base}/manifest", headers=READER) as response:
            assert response.status == 200 and await response.read() == canonical_json(target.manifest)
        status, doc = await get_json(session, base, READER)
        assert status == 200 and doc["manifest"] == target.manifest and doc["sha256"] == target.sha256
        assert verify_receipt(doc["receipt"], key, expected_item=target.item) == []
        status, receipt = await get_json(session, f"{base}/receipt", READER)
        assert status == 200 and verify_receipt(receipt, key, expected_item=target.item,
                                                expected_sha256=target.sha256) == []
        unknown = "00000000-0000-4000-8000-000000000000"
        status, doc = await get_json(session, f"{dev_central.url}/v1/items/{unknown}", READER)
        assert status == 404 and doc["error"] == "not_found"
        status, doc = await get_json(session, f"{dev_central.url}/v1/items/..%2F..%2Fetc", READER)
        assert status in (400, 404)
    whats = [(row["what"], row["item"]) for row in dev_central.index.access_log()]
    assert whats[:5] == [("content", target.item), ("manifest", target.item), ("item", target.item),
                         ("receipt", target.item), ("item", "00000000-0000-4000-8000-000000000000")]


async def test_a_damaged_object_is_never_served_complete(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    accepted = await _populate(dev_central, station, other_station)
    target = accepted[0]
    path = dev_central.running.parts.file_objects.path_of(target.sha256)
    os.chmod(path, 0o644)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(f"{dev_central.url}/v1/items/{target.item}/content",
                                   headers=READER) as response:
                await response.read()
    path.unlink()
    async with aiohttp.ClientSession() as session:
        status, doc = await get_json(session, f"{dev_central.url}/v1/items/{target.item}/content", READER)
    assert status == 500 and doc["error"] == "store_damaged"


async def test_a_read_that_cannot_be_logged_is_refused(
    dev_central: HttpCentral,
    station: FakeStation,
    other_station: FakeStation,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accepted = await _populate(dev_central, station, other_station)

    def broken(**_: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(dev_central.index, "log_access", broken)
    async with aiohttp.ClientSession() as session:
        for tail in ("", "/content", "/manifest", "/history", "/receipt"):
            async with session.get(f"{dev_central.url}/v1/items/{accepted[0].item}{tail}",
                                   headers=READER) as response:
                assert response.status == 503
                doc = await response.json()
                assert doc["error"] == "access_log_unavailable"
        status, _ = await get_json(session, f"{dev_central.url}/v1/items?case=CASE-A", READER)
        assert status == 503


async def test_stations_and_anonymous_callers_cannot_read(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    accepted = await _populate(dev_central, station, other_station)
    async with aiohttp.ClientSession() as session:
        status, doc = await get_json(session, f"{dev_central.url}/v1/items/{accepted[0].item}/content",
                                     {DEV_STATION_HEADER: station.station_id})
        assert status == 401 and doc["error"] == "unauthenticated"
    dev_central.index.enroll_reader("auditor-7", "a" * 64)
    dev_central.index.revoke_reader("auditor-7", "left the unit")
    async with aiohttp.ClientSession() as session:
        status, doc = await get_json(session, f"{dev_central.url}/v1/items", READER)
    assert status == 403 and doc["error"] == "forbidden"
    assert dev_central.index.access_log() == []


async def test_reader_over_mutual_tls(tls_central: HttpCentral, station: FakeStation) -> None:
    station_bundle = tls_central.enroll_tls(station)
    acquired = station.acquire(b"tls evidence")
    async with tls_session(station_bundle) as session:
        status, _ = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201
    reader_bundle = tls_central.enroll_reader_tls("court-expert")
    content_url = f"{tls_central.url}/v1/items/{acquired.item}/content"
    async with tls_session(reader_bundle) as session, session.get(content_url) as response:
        assert response.status == 200 and await response.read() == acquired.content
    row = tls_central.index.access_log()[-1]
    assert (row["reader"], row["what"], row["item"]) == ("court-expert", "content", acquired.item)


@pytest.mark.parametrize(
    "query",
    [
        {"bogus": ["1"]},
        {"case": ["a", "b"]},
        {"limit": ["0"]},
        {"limit": ["1001"]},
        {"limit": ["ten"]},
        {"from": ["yesterday"]},
        {"from": ["2024-05-01T10:00:00"]},
        {"from": ["2024-05-02"], "to": ["2024-05-01"]},
        {"station": ["../x"]},
        {"after": ["!!!"]},
        {"after": [base64.urlsafe_b64encode(b'{"a":1}').decode()]},
        {"case": ["x" * 201]},
        {"case": ["a\nb"]},
    ],
)
def test_hostile_queries(query: dict[str, list[str]]) -> None:
    class Params(dict[str, list[str]]):
        def getall(self, name: str, default: list[str]) -> list[str]:
            return self.get(name, default)

    with pytest.raises(Rejection) as caught:
        parse_item_query(Params(query))
    assert caught.value.code == "bad_request"


def test_query_parsing() -> None:
    class Params(dict[str, list[str]]):
        def getall(self, name: str, default: list[str]) -> list[str]:
            return self.get(name, default)

    parsed = parse_item_query(Params({"case": ["C"], "from": ["2024-05-01T08:00:00+08:00"], "limit": ["5"]}))
    assert parsed == ItemQuery(case_number="C", time_from="2024-05-01T00:00:00.000000Z", limit=5)


async def test_head_of_content_sends_no_body_and_keeps_the_connection_usable(
    dev_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    accepted = await _populate(dev_central, station, other_station)
    target = accepted[3]
    url = f"{dev_central.url}/v1/items/{target.item}/content"
    connector = aiohttp.TCPConnector(limit=1)  # the same kept-alive connection for both requests
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.head(url, headers=READER) as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(target.content))
            assert response.headers["ETag"] == f'"{target.sha256}"'
            assert await response.read() == b""
        async with session.get(url, headers=READER) as response:
            assert response.status == 200 and await response.read() == target.content
    whats = [row["what"] for row in dev_central.index.access_log()]
    assert whats == ["content-head", "content"]
