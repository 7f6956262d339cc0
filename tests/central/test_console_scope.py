"""Reader scope (edge.central.console.scope): roles, units and sensitive items, enforced by the API on
every read (search, item, content, manifest, history, receipt, inclusion proof, station ledger), each
rule with its control; marking and unmarking recorded; an existing store gets its items' units."""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from tests.central.conftest import (
    Acquired,
    FakeStation,
    HttpCentral,
    enroll,
    get_json,
    register_over_http,
    tls_session,
)

EAST, WEST = "330106000000", "330102000000"
MISSING = "00000000-0000-4000-8000-000000000000"
ITEM_READS = ("", "/content", "/manifest", "/history", "/receipt")


def _as(name: str) -> dict[str, str]:
    return {DEV_READER_HEADER: name}


async def _accept(central: HttpCentral, station: FakeStation, units: list[str | None]) -> list[Acquired]:
    enroll(central.index, station)
    accepted = []
    async with aiohttp.ClientSession() as session:
        for n, unit in enumerate(units):
            acquired = station.acquire(f"clip {n}".encode() * 50, unit_code=unit or "",
                                       case_number=f"CASE-{n}")
            after = central.index.ledger_head(station.station_id)[0]
            status, doc = await register_over_http(session, central.url, station, acquired,
                                                   {DEV_STATION_HEADER: station.station_id}, after=after)
            assert status == 201, doc
            accepted.append(acquired)
    return accepted


async def _status(session: aiohttp.ClientSession, url: str, reader: str) -> tuple[int, Any]:
    async with session.get(url, headers=_as(reader)) as response:
        body = await response.read()
        return response.status, body


async def _search(
    session: aiohttp.ClientSession, central: HttpCentral, reader: str, query: str = ""
) -> set[str]:
    status, doc = await get_json(session, f"{central.url}/v1/items?{query}", _as(reader))
    assert status == 200, doc
    return {row["item"] for row in doc["items"]}


def _grant(central: HttpCentral, name: str, role: Role, *units: str) -> None:
    central.console.grant(name, role, units, by="admin", reason="test")


async def test_a_reader_sees_only_its_units_items_on_every_read(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    east, west, unknown = await _accept(dev_central, station, [EAST, WEST, None])
    _grant(dev_central, "east-reader", Role.READER, EAST)
    _grant(dev_central, "west-reader", Role.READER, WEST)
    url = dev_central.url
    async with aiohttp.ClientSession() as session:
        assert await _search(session, dev_central, "east-reader") == {east.item}
        assert await _search(session, dev_central, "west-reader") == {west.item}
        # A filter cannot widen the scope: asking for the other unit finds nothing.
        assert await _search(session, dev_central, "east-reader", f"unit={WEST}") == set()
        for suffix in ITEM_READS:
            own = await _status(session, f"{url}/v1/items/{east.item}{suffix}", "east-reader")
            assert own[0] == 200, (suffix, own)
            other = await _status(session, f"{url}/v1/items/{west.item}{suffix}", "east-reader")
            missing = await _status(session, f"{url}/v1/items/{MISSING}{suffix}", "east-reader")
            # Another unit's item answers exactly like one that does not exist (apart from its id).
            assert other[0] == missing[0] == 404, (suffix, other, missing)
            assert other[1].replace(west.item.encode(), b"ID") == missing[1].replace(MISSING.encode(), b"ID")
            control = await _status(session, f"{url}/v1/items/{west.item}{suffix}", "west-reader")
            assert control[0] == 200, (suffix, control)
        inclusion = f"{url}/v1/log/inclusion?item="
        assert (await _status(session, inclusion + west.item, "east-reader"))[0] == 404
        assert (await _status(session, inclusion + west.item, "west-reader"))[0] == 200
        # An item whose unit is unknown is seen by supervisors only.
        assert (await _status(session, f"{url}/v1/items/{unknown.item}", "east-reader"))[0] == 404
    # Every attempt is on record, the refused ones too.
    refused = [row for row in dev_central.index.access_log(reader="east-reader", item=west.item)]
    assert {row["what"] for row in refused} == {"item", "content", "manifest", "history", "receipt",
                                                "inclusion"}


async def test_a_supervisor_sees_every_unit_and_a_reader_without_units_nothing(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    accepted = await _accept(dev_central, station, [EAST, WEST, None])
    _grant(dev_central, "chief", Role.SUPERVISOR)
    _grant(dev_central, "north-reader", Role.READER, "330108000000")
    async with aiohttp.ClientSession() as session:
        assert await _search(session, dev_central, "chief") == {a.item for a in accepted}
        assert await _search(session, dev_central, "chief", f"unit={WEST}") == {accepted[1].item}
        assert await _search(session, dev_central, "north-reader") == set()
        for acquired in accepted:
            assert (await _status(session, f"{dev_central.url}/v1/items/{acquired.item}", "chief"))[0] == 200
            assert (await _status(session, f"{dev_central.url}/v1/items/{acquired.item}",
                                  "north-reader"))[0] == 404


async def test_a_sensitive_item_is_seen_only_by_the_readers_named_on_it_and_marking_is_recorded(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    secret, plain = await _accept(dev_central, station, [EAST, EAST])
    _grant(dev_central, "chief", Role.SUPERVISOR)
    _grant(dev_central, "legal", Role.READER, EAST)
    _grant(dev_central, "clerk", Role.READER, EAST)
    dev_central.console.mark_sensitive(secret.item, ["legal"], by="chief", reason="minor's face",
                                       remote="10.0.0.9")
    url = f"{dev_central.url}/v1/items/{secret.item}"
    async with aiohttp.ClientSession() as session:
        for reader in ("chief", "clerk"):  # the supervisor too: a sensitive item is for its named readers
            assert await _search(session, dev_central, reader) == {plain.item}
            for suffix in ITEM_READS:
                assert (await _status(session, url + suffix, reader))[0] == 404, (reader, suffix)
        assert await _search(session, dev_central, "legal") == {secret.item, plain.item}
        for suffix in ITEM_READS:
            assert (await _status(session, url + suffix, "legal"))[0] == 200, suffix
        dev_central.console.unmark_sensitive(secret.item, by="chief", reason="blurred copy made", remote=None)
        assert await _search(session, dev_central, "clerk") == {secret.item, plain.item}
        assert (await _status(session, url, "clerk"))[0] == 200
    events = dev_central.console.sensitivity_events(secret.item)
    assert [(e["action"], e["by"], e["reason"], e["readers"]) for e in events] == [
        ("marked", "chief", "minor's face", ["legal"]),
        ("unmarked", "chief", "blurred copy made", []),
    ]
    assert all(e["time"] for e in events) and events[0]["remote"] == "10.0.0.9"
    # The record cannot be rewritten.
    conn = sqlite3.connect(dev_central.config.layout.index_db)
    try:
        try:
            conn.execute("DELETE FROM sensitivity_events")
            raise AssertionError("sensitivity_events accepted a DELETE")
        except sqlite3.IntegrityError as exc:
            assert "append-only" in str(exc)
    finally:
        conn.close()


async def test_the_station_unit_assigned_at_the_central_comes_before_the_manifest(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    before = (await _accept(dev_central, station, [WEST]))[0]
    dev_central.console.assign_station_unit(station.station_id, EAST, by="admin", reason="station moved")
    after = station.acquire(b"later clip" * 50, unit_code=WEST)
    async with aiohttp.ClientSession() as session:
        head = dev_central.index.ledger_head(station.station_id)[0]
        status, doc = await register_over_http(session, dev_central.url, station, after,
                                               {DEV_STATION_HEADER: station.station_id}, after=head)
        assert status == 201, doc
    # The manifest says WEST for both; the administrator's assignment decides from then on.
    assert dev_central.index.item_unit(before.item) == WEST
    assert dev_central.index.item_unit(after.item) == EAST


async def test_a_store_made_before_the_console_gets_its_items_units(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    east, none = await _accept(dev_central, station, [EAST, None])
    path = dev_central.config.layout.index_db
    await dev_central.running.stop()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE item_units")  # as an index.db written before the console was
    conn.close()
    database = SqliteDatabase.open(path)
    try:
        assert database.index.item_unit(east.item) == EAST
        assert database.index.item_unit(none.item) is None
        rows = database.conn.execute("SELECT source FROM item_units ORDER BY source").fetchall()
        assert [r[0] for r in rows] == ["manifest", "none"]
    finally:
        database.close()


async def test_a_reader_certificate_without_a_grant_is_refused(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    bundle = tls_central.enroll_tls(station)
    acquired = station.acquire(b"clip" * 100, unit_code=EAST)
    async with tls_session(bundle) as session:
        status, doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201, doc
    ungranted = tls_central.enroll_reader_tls("new-auditor")
    tls_central.console.revoke_grant("new-auditor", by="admin", reason="not yet approved")
    granted = tls_central.enroll_reader_tls("east-auditor", role=Role.READER, units=(EAST,))
    url = f"{tls_central.url}/v1/items/{acquired.item}"
    async with tls_session(ungranted) as session, session.get(url) as response:
        assert response.status == 403
        assert "no role" in (await response.json())["detail"]
    async with tls_session(granted) as session, session.get(url) as response:
        assert response.status == 200


async def test_the_station_ledger_is_redacted_for_items_a_reader_may_not_see(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    east, west = await _accept(dev_central, station, [EAST, WEST])
    dev_central.console.assign_station_unit(station.station_id, EAST, by="admin", reason="its unit")
    _grant(dev_central, "east-reader", Role.READER, EAST)
    _grant(dev_central, "west-reader", Role.READER, WEST)
    url = f"{dev_central.url}/v1/stations/{station.station_id}/ledger"
    async with aiohttp.ClientSession() as session:
        status, doc = await get_json(session, url, _as("east-reader"))
        assert status == 200
        by_item: dict[str | None, list[dict[str, Any]]] = {}
        for entry in doc["entries"]:
            by_item.setdefault(entry.get("item"), []).append(entry)
        assert by_item[east.item] and all("data" in e for e in by_item[east.item])
        redacted = [e for e in doc["entries"] if "redacted" in e]
        # Not a format-2 entry's item tag: it would let a reader who once saw the item's id follow it.
        assert redacted and all(set(e) == {"seq", "prev", "hash", "redacted"} for e in redacted)
        assert west.item not in str(doc)
        # The chain still links through the redacted entries.
        entries = doc["entries"]
        assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
        # A reader of another unit may not read this station's ledger at all.
        status, doc = await get_json(session, url, _as("west-reader"))
        assert status == 403
