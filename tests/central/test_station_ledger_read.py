"""`GET /v1/stations/{id}/ledger`: the station ledger the central holds, to that station itself and to
enrolled readers only, over real mutual TLS; hostile query numbers are refused with a JSON body; pages
are bounded in entries and bytes and chain to the head the central signed as witnessed."""

from __future__ import annotations

import io
import json

import aiohttp

from edge.central.station_ledger_read import MAX_ANSWER_BYTES, MAX_LIMIT
from edge.custody.canonical import canonical_json
from edge.custody.ledger import GENESIS_PREV, EntryType, entry_hash
from edge.custody.witness import verify_witnessed_head
from tests.central.conftest import FakeStation, HttpCentral, get_json, post_json, tls_session


async def push(session: aiohttp.ClientSession, central: HttpCentral, station: FakeStation) -> None:
    status, doc = await post_json(session, f"{central.url}/v1/stations/{station.station_id}/ledger",
                                  station.segment())
    assert status == 200, doc


def ledger_url(central: HttpCentral, station: FakeStation | str, query: str = "") -> str:
    name = station if isinstance(station, str) else station.station_id
    return f"{central.url}/v1/stations/{name}/ledger{query}"


async def test_a_station_reads_its_own_ledger_only_and_readers_read_any(
    tls_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    for fake in (station, other_station):
        fake.acquire(b"evidence of " + fake.station_id.encode())
    bundle_a, bundle_b = tls_central.enroll_tls(station), tls_central.enroll_tls(other_station)
    auditor = tls_central.enroll_reader_tls("auditor-li")
    revoked = tls_central.enroll_reader_tls("auditor-gone")
    tls_central.index.revoke_reader("auditor-gone", "left the unit")
    async with tls_session(bundle_a) as a, tls_session(bundle_b) as b:
        await push(a, tls_central, station)
        await push(b, tls_central, other_station)
        # Control: A reads A, every entry exactly as it hashed it, chained to the signed witnessed head.
        status, doc = await get_json(a, ledger_url(tls_central, station))
        assert status == 200, doc
        assert [e["seq"] for e in doc["entries"]] == list(range(1, station.ledger.head()[0] + 1))
        prev = GENESIS_PREV
        for entry in doc["entries"]:
            assert entry["prev"] == prev and entry_hash({k: v for k, v in entry.items() if k != "hash"}) == \
                entry["hash"]
            prev = entry["hash"]
        assert doc["next"] is None and doc["head"] == {"seq": station.ledger.head()[0], "hash": prev}
        assert verify_witnessed_head(doc["witnessed_head"], tls_central.central_public_key,
                                     expected_station=station.station_id) == []
        assert doc["witnessed_head"]["hash"] == prev
        # A cannot read B, nor B read A, nor anyone a station that does not exist: 403, a JSON body.
        for session, target in ((a, other_station.station_id), (b, station.station_id), (a, "st-9999")):
            status, doc = await get_json(session, ledger_url(tls_central, target))
            assert status == 403 and doc["error"] == "wrong_station", doc
            assert "own ledger only" in doc["detail"]
        assert tls_central.index.rejections(station.station_id)[-1]["code"] == "wrong_station"
    async with tls_session(auditor) as reader, tls_session(revoked) as gone:
        for reader_target in (station, other_station):
            status, doc = await get_json(reader, ledger_url(tls_central, reader_target, "?after=1&limit=1"))
            assert status == 200 and [e["seq"] for e in doc["entries"]] == [2], doc
            assert doc["next"] == 2
            status, doc = await get_json(reader, ledger_url(tls_central, reader_target, "?after=2"))
            assert status == 200 and [e["seq"] for e in doc["entries"]] == [3] and doc["next"] is None
        status, doc = await get_json(reader, ledger_url(tls_central, "st-9999"))
        assert status == 404 and doc["error"] == "not_found"
        status, doc = await get_json(gone, ledger_url(tls_central, station))
        assert status == 403 and doc["error"] == "forbidden"
    # Every reader's read is on the access log before it is answered; the stations' own reads are not.
    reads = [row for row in tls_central.index.access_log() if row["what"] == "station-ledger"]
    assert [(row["reader"], row["query"].split("&")[0]) for row in reads] == [
        ("auditor-li", "station=st-0001"), ("auditor-li", "station=st-0001"),
        ("auditor-li", "station=st-0002"), ("auditor-li", "station=st-0002"),
        ("auditor-li", "station=st-9999"),
    ]


async def test_hostile_query_numbers_are_refused_with_a_json_body(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    station.acquire(b"evidence")
    dev_central.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    headers = {"X-Edge-Station": station.station_id}
    async with aiohttp.ClientSession() as session:
        await post_json(session, f"{dev_central.url}/v1/stations/{station.station_id}/ledger",
                        station.segment(), headers)
        status, doc = await get_json(session, ledger_url(dev_central, station, "?after=0&limit=1"), headers)
        assert status == 200 and len(doc["entries"]) == 1 and doc["next"] == 1  # the control
        for query in (
            "?after=%D9%A1",  # ARABIC-INDIC DIGIT ONE: int() reads it as 1
            "?after=%C2%B2",  # SUPERSCRIPT TWO: isdigit() says yes
            "?after=+1", "?after=-1", "?after=1_0", "?after=%201", "?after=", "?after=0x10",
            "?after=99999999999999999999", "?after=9223372036854775807", "?after=9007199254740992",
            "?limit=0", f"?limit={MAX_LIMIT + 1}", "?limit=1e3",
            "?after=1&after=2", "?limit=1&limit=1", "?seq=1", "?after=1&bogus=x",
        ):
            status, doc = await get_json(session, ledger_url(dev_central, station, query), headers)
            assert status == 400 and doc["error"] == "bad_request", (query, status, doc)
        status, doc = await get_json(session, ledger_url(dev_central, station, "?after=0000000002"), headers)
        assert status == 200 and doc["entries"][0]["seq"] == 3
        status, doc = await get_json(session, ledger_url(dev_central, station, "?after=9007199254740991"),
                                     headers)
        assert status == 200 and doc["entries"] == [] and doc["next"] is None


async def test_a_page_is_bounded_in_bytes_and_the_pages_cover_the_ledger(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    acquired = station.acquire(b"evidence")
    big = "证" * 100_000  # 300 kB of UTF-8 per entry
    for n in range(6):
        station.record(EntryType.TAGGED, acquired.item, {"changes": {"subject": f"{n}{big}"}, "previous": {},
                                                         "by": "clerk"})
    dev_central.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    headers = {"X-Edge-Station": station.station_id}
    async with aiohttp.ClientSession() as session:
        # A body this large goes as a stream (aiohttp warns about a large bytes body).
        async with session.post(f"{dev_central.url}/v1/stations/{station.station_id}/ledger",
                                data=io.BytesIO(canonical_json(station.segment())),
                                headers={**headers, "Content-Type": "application/json"}) as posted:
            assert posted.status == 200, await posted.text()
        seen: list[int] = []
        after: int | None = 0
        while after is not None:
            async with session.get(ledger_url(dev_central, station, f"?after={after}&limit={MAX_LIMIT}"),
                                   headers=headers) as response:
                body = await response.read()
                assert response.status == 200
            assert len(body) <= MAX_ANSWER_BYTES + 4096
            page = json.loads(body)
            assert page["entries"], "a page holds at least one entry"
            seen += [e["seq"] for e in page["entries"]]
            after = page["next"]
        assert seen == list(range(1, station.ledger.head()[0] + 1))
        assert len(seen) > 3, "the big entries took several pages"
