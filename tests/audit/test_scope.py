"""The package, the statistics and the spot checks see only what the reader's scope may see: a unit's reader
gets that unit's items, a sensitive item only the readers named on it, and a case with nothing visible
answers exactly like a case that does not exist (the supervisor is each control)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import aiohttp

from edge.central.index import Role
from tests.audit.conftest import CASE, STATION, UNIT_A, UNIT_B, AuditCentral
from tests.tamper.stores import run_edge

EVERYTHING = {"from": "2000-01-01", "to": "2100-01-01"}


async def _get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def test_a_units_reader_gets_a_package_of_its_units_items_only(audit_central: AuditCentral,
                                                                      tmp_path: Path) -> None:
    url = audit_central.url
    unit_a_items = {r.item for r in audit_central.items(CASE)
                    if r.manifest["source"]["unit_code"] == UNIT_A[0]}
    tagged = audit_central.evidence.tagged_item
    assert len(unit_a_items) == 5 and tagged not in unit_a_items
    async with audit_central.reader("reader-b", Role.READER, UNIT_B[0]) as session:
        status, listed = await _get(session, f"{url}/v1/disclosure", {"case": CASE})
        assert status == 200 and [i["item"] for i in listed["items"]] == [tagged]
        status, body = await _get(session, f"{url}/v1/disclosure/package", {"case": CASE})
        assert status == 200
        status, stats = await _get(session, f"{url}/v1/stats", EVERYTHING)
        assert status == 200 and stats["items"] == 3
        assert [u["unit_code"] for u in stats["by_unit"]] == [UNIT_B[0]]
        status, check = await _get(session, f"{url}/v1/spot-checks", {**EVERYTHING, "fraction": "1",
                                                                       "seed": "1"})
        assert status == 200 and check["population"] == 3 and check["failed"] == 0
    archive = tmp_path / "b.zip"
    archive.write_bytes(body)
    folder = tmp_path / "b"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    assert [p.name for p in (folder / "items").iterdir()] == [tagged]
    # Unit A's entries are in the ledger segment only as links: no item id, hash or device of theirs.
    ledger = (folder / "ledger" / STATION / "entries.jsonl").read_text()
    assert not any(item in ledger for item in unit_a_items)
    assert run_edge("verify", str(folder)).code == 4  # holds; origin unproven without a pinned key
    # Control: a supervisor's package of the same case holds all six.
    async with audit_central.reader("chief") as session:
        status, listed = await _get(session, f"{url}/v1/disclosure", {"case": CASE})
        assert status == 200 and len(listed["items"]) == 6


async def test_a_case_with_nothing_visible_answers_like_no_case(audit_central: AuditCentral) -> None:
    url = audit_central.url
    async with audit_central.reader("reader-x", Role.READER, "999999") as session:
        hidden = await _get(session, f"{url}/v1/disclosure/package", {"case": CASE})
        missing = await _get(session, f"{url}/v1/disclosure/package", {"case": "NO-SUCH-CASE"})
        assert hidden[0] == missing[0] == 404
        assert hidden[1] == missing[1]
        status, stats = await _get(session, f"{url}/v1/stats", EVERYTHING)
        assert status == 200 and stats["items"] == 0
    # The attempt is on record all the same.
    rows = [r for r in audit_central.index.access_log() if r["reader"] == "reader-x"]
    assert [r["query"] for r in rows if r["what"] == "disclosure-package"] == [f"case={CASE}",
                                                                             "case=NO-SUCH-CASE"]
    assert not [r for r in rows if r["what"] == "disclosure"]


async def test_a_sensitive_item_goes_only_to_the_readers_named_on_it(audit_central: AuditCentral) -> None:
    url = audit_central.url
    tagged = audit_central.evidence.tagged_item
    audit_central.running.parts.console.mark_sensitive(tagged, ["legal-1"], by="chief", reason="a minor",
                                                       remote=None)
    async with audit_central.reader("reader-b2", Role.READER, UNIT_B[0]) as session:
        status, _ = await _get(session, f"{url}/v1/disclosure", {"case": CASE})
        assert status == 404
        status, stats = await _get(session, f"{url}/v1/stats", EVERYTHING)
        assert stats["items"] == 2
    async with audit_central.reader("legal-1", Role.READER, UNIT_B[0]) as session:
        status, listed = await _get(session, f"{url}/v1/disclosure", {"case": CASE})
        assert status == 200 and [i["item"] for i in listed["items"]] == [tagged]
    # A supervisor not named on it does not get it either.
    async with audit_central.reader("chief-2") as session:
        status, listed = await _get(session, f"{url}/v1/disclosure", {"case": CASE})
        assert status == 200 and tagged not in {i["item"] for i in listed["items"]}
        assert len(listed["items"]) == 5
