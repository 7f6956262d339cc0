"""Review 5: a redacted line's item tag tells anyone who knows the item's id that the entry is that item's.

``item_tag = SHA-256(domain || item || "\\n" || seq)``: the only secret is the item id, and item ids are not
secret from the people the redaction is for. A reader of the station ledger (GET /v1/stations/S/ledger)
who once saw an item (before it was marked sensitive, or before it moved to another unit) keeps its id,
and from then on can test every redacted line: each later entry of the item (its tagging into an internal
investigation, a retrieval, a purge) is named, with its place in the ledger, although the reader may no
longer see the item. Before format 2 a redacted line was {seq, prev, hash}: it named nothing. The same
holds for disclosure packages: whoever holds case B's package (B's item ids) finds B's entries among the
redacted lines of case A's package. Expected: a redacted line lets no one who lacks the right to the item
tie it to the item.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.index import Role
from edge.custody.ledger import ItemTagTester
from tests.central.conftest import FakeStation, HttpCentral, get_json, post_json
from tests.central.test_console_scope import EAST, _accept


async def _ledger(session: aiohttp.ClientSession, central: HttpCentral, station: FakeStation,
                  reader: str) -> list[dict[str, Any]]:
    url = f"{central.url}/v1/stations/{station.station_id}/ledger"
    status, doc = await get_json(session, url, {DEV_READER_HEADER: reader})
    assert status == 200, doc
    entries: list[dict[str, Any]] = doc["entries"]
    return entries


async def test_a_reader_cannot_follow_an_item_it_may_no_longer_see(
    dev_central: HttpCentral, station: FakeStation
) -> None:
    secret, plain = await _accept(dev_central, station, [EAST, EAST])
    dev_central.console.assign_station_unit(station.station_id, EAST, by="admin", reason="its unit")
    dev_central.console.grant("chief", Role.SUPERVISOR, (), by="admin", reason="test")
    dev_central.console.grant("clerk", Role.READER, (EAST,), by="admin", reason="test")
    async with aiohttp.ClientSession() as session:
        seen = await _ledger(session, dev_central, station, "clerk")
        assert any(e.get("item") == secret.item for e in seen)  # the clerk knows the item's id
        dev_central.console.mark_sensitive(secret.item, ["chief"], by="chief", reason="internal affairs",
                                           remote=None)
        head = dev_central.index.ledger_head(station.station_id)[0]
        station.tag(secret.item, {"case_number": "IA-2026-7"}, by="investigator")
        station.tag(plain.item, {"location": "room 3"}, by="clerk")
        segment = station.segment(head)
        status, doc = await post_json(session, f"{dev_central.url}/v1/stations/{station.station_id}/ledger",
                                      segment, {DEV_STATION_HEADER: station.station_id})
        assert status in (200, 201), doc
        later = [e for e in await _ledger(session, dev_central, station, "clerk") if e["seq"] > head]
    redacted = [e for e in later if "redacted" in e]
    assert redacted, "control: the secret item's new entry is redacted for the clerk"
    assert all(e.get("item") != secret.item for e in later)
    tester = ItemTagTester([secret.item])
    named = [e["seq"] for e in redacted
             if "item_tag" in e and tester.item_of(e["seq"], e["item_tag"]) == secret.item]
    assert all(set(e) == {"seq", "prev", "hash", "redacted"} for e in redacted), redacted
    assert not named, (f"the clerk, who may not see item {secret.item} any more, finds its entries at seqs "
                       f"{named} by testing the redacted lines' item_tag against the id it kept")
