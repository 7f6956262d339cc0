"""Statistics (统计分析) and spot checks (案卷抽查) over evidence a real station sent, read over mutual
TLS."""

from __future__ import annotations

import html.parser
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from edge.central.stats import ItemFacts, Statistics, nearest_rank
from tests.audit.conftest import CASE, UNIT_A, UNIT_B, AuditCentral

EVERYTHING = {"from": "2000-01-01", "to": "2100-01-01"}
# simulators.recorder.volume.DEFAULT_START: the first recording starts 2024-06-03 08:00 on the recorder's
# clock, which is China time (UTC+8) with no offset; each next one 1-30 minutes later.
FIRST_START_UTC = datetime(2024, 6, 3, 0, 0, tzinfo=UTC)


async def get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_statistics_by_unit_officer_and_day_with_times(audit_central: AuditCentral) -> None:
    evidence = audit_central.evidence
    records = audit_central.items()
    async with audit_central.reader("supervisor-1") as session:
        status, doc = await get(session, f"{audit_central.url}/v1/stats", EVERYTHING)
    assert status == 200, doc
    assert doc["items"] == len(records) == sum(evidence.files_per_officer.values())
    by_unit = {u["unit_code"]: u for u in doc["by_unit"]}
    assert by_unit[UNIT_A[0]]["items"] == 5 and by_unit[UNIT_A[0]]["unit_name"] == UNIT_A[1]
    assert by_unit[UNIT_B[0]]["items"] == 3
    assert {o["officer_no"]: o["items"] for o in doc["by_officer"]} == evidence.files_per_officer
    assert {o["officer_no"]: o["unit_code"] for o in doc["by_officer"]} == evidence.officers
    assert [(d["day"], d["items"]) for d in doc["by_day"]] == [("2024-06-03", len(records))]
    seconds = sum(r.manifest["media"].get("duration_ms", 0) for r in records) / 1000
    assert seconds > 0 and abs(doc["hours"] - seconds / 3600) < 1e-3
    # Officer A's five carry the case from the station's per-officer defaults; one of officer B's three
    # was tagged into it afterwards; B's other two carry B's own case.
    assert doc["with_case_number"] == len(records) and doc["with_case_number_share"] == 1.0
    assert doc["important"] == evidence.important_names
    assert len(doc["important_items"]) == evidence.important_names
    # Recording (China time, corrected to UTC) to docking: the recordings began within four hours of the
    # first; a time zone left uncorrected would be eight hours off.
    latest_acquired = max(datetime.fromisoformat(r.acquired_utc.replace("Z", "+00:00")) for r in records)
    to_docking = doc["recording_to_docking"]
    assert to_docking["count"] == len(records) and to_docking["missing"] == 0
    low = (latest_acquired - FIRST_START_UTC - timedelta(hours=4, minutes=5)).total_seconds()
    high = (latest_acquired - FIRST_START_UTC).total_seconds()
    assert low <= to_docking["median_s"] <= to_docking["p90_s"] <= high
    to_receipt = doc["docking_to_receipt"]
    assert to_receipt["count"] == len(records)
    assert 0 <= to_receipt["median_s"] <= to_receipt["p90_s"] < 300
    rows = audit_central.index.access_log()
    assert [(r["reader"], r["what"]) for r in rows] == [("supervisor-1", "stats")]


async def test_statistics_follow_tags_and_the_period(audit_central: AuditCentral) -> None:
    async with audit_central.reader("supervisor-2") as session:
        status, doc = await get(session, f"{audit_central.url}/v1/stats", {"from": "2000-01-01",
                                                                           "to": "2001-01-01"})
        assert status == 200 and doc["items"] == 0 and doc["with_case_number_share"] is None
        status, doc = await get(session, f"{audit_central.url}/v1/stats", {"from": "2000-01-01"})
        assert status == 400 and "to" in doc["detail"]
        status, doc = await get(session, f"{audit_central.url}/v1/stats", {**EVERYTHING, "unit": "x"})
        assert status == 400
    tagged = audit_central.evidence.tagged_item
    assert audit_central.index.current_case(tagged)["case_number"] == CASE


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert nearest_rank(values, 0.5) == 5.0 and nearest_rank(values, 0.9) == 9.0
    assert nearest_rank([7.0], 0.9) == 7.0
    fold = Statistics()
    for n, seconds in enumerate((30.0, 10.0, 20.0)):
        fold.add(ItemFacts(item=f"i{n}", unit_code="u", unit_name="U", officer_no="1", officer_name="A",
                           day="2024-06-03", duration_s=1800.0, case_number=None if n else "C",
                           important=n == 2,
                           recording_to_docking_s=seconds, docking_to_receipt_s=None, acquired_utc="t"))
    doc = fold.to_dict()
    assert doc["hours"] == 1.5 and doc["with_case_number_share"] == round(1 / 3, 4) and doc["important"] == 1
    assert doc["recording_to_docking"] == {"count": 3, "missing": 0, "median_s": 20.0, "p90_s": 30.0}
    assert doc["docking_to_receipt"] == {"count": 0, "missing": 3, "median_s": None, "p90_s": None}


class _Rows(html.parser.HTMLParser):
    """The sampled rows of a printed report: item -> whether it passed."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, bool] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-item"):
            self.rows[str(found["data-item"])] = found.get("data-ok") == "true"


async def test_a_spot_check_is_reproducible_from_its_seed_and_recorded(audit_central: AuditCentral) -> None:
    url = f"{audit_central.url}/v1/spot-checks"
    async with audit_central.reader("supervisor-3") as session:
        status, first = await get(session, url, {**EVERYTHING, "size": "3", "seed": "42"})
        assert status == 200, first
        assert first["sampled"] == 3 and first["population"] == 8 and first["failed"] == 0
        assert all(all(c["ok"] for c in item["checks"].values()) for item in first["items"])
        status, again = await get(session, url, {**EVERYTHING, "size": "3", "seed": "42"})
        assert [i["item"] for i in again["items"]] == [i["item"] for i in first["items"]]
        # Without a seed the central draws one, says which, and that seed draws the same sample again.
        status, drawn = await get(session, url, {**EVERYTHING, "fraction": "0.5"})
        assert status == 200 and drawn["sampled"] == 4
        same_seed = {**EVERYTHING, "fraction": "0.5", "seed": str(drawn["seed"])}
        status, redrawn = await get(session, url, same_seed)
        assert [i["item"] for i in redrawn["items"]] == [i["item"] for i in drawn["items"]]
        for bad in ({**EVERYTHING}, {**EVERYTHING, "size": "2", "fraction": "0.5"},
                    {**EVERYTHING, "fraction": "1.5"}, {**EVERYTHING, "size": "0"},
                    {**EVERYTHING, "size": "2", "seed": "-1"}):
            assert (await get(session, url, bad))[0] == 400, bad
    rows = audit_central.index.access_log()
    checks = [r for r in rows if r["what"] == "spot-check" and r["item"] is None]
    assert '"seed":42' in checks[0]["query"] and '"sample":"size=3"' in checks[0]["query"]
    assert {r["item"] for r in rows if r["what"] == "spot-check" and r["item"]} >= {
        i["item"] for i in first["items"]}
    results = [r for r in rows if r["what"] == "spot-check-result"]
    assert len(results) == 4 and '"failed":0' in results[0]["query"]


async def test_a_tampered_object_in_the_sample_fails_and_the_report_prints_it(
    audit_central: AuditCentral,
) -> None:
    url = f"{audit_central.url}/v1/spot-checks"
    params = {**EVERYTHING, "fraction": "1", "seed": "7"}
    async with audit_central.reader("supervisor-4") as session:
        status, clean = await get(session, url, params)
        assert status == 200 and clean["failed"] == 0 and clean["sampled"] == 8  # control
        victim = audit_central.items(CASE)[2]
        path = audit_central.object_path(victim.sha256)
        os.chmod(path, 0o600)
        data = bytearray(path.read_bytes())
        data[100] ^= 0x80
        path.write_bytes(bytes(data))
        status, tampered = await get(session, url, params)
        assert status == 200 and tampered["failed"] == 1
        failed = [i for i in tampered["items"] if not i["ok"]]
        assert [i["item"] for i in failed] == [victim.item]
        assert not failed[0]["checks"]["object"]["ok"]
        assert failed[0]["checks"]["manifest"]["ok"] and failed[0]["checks"]["receipt"]["ok"]
        assert failed[0]["checks"]["ledger"]["ok"]
        status, page = await get(session, f"{url}/report", params)
        assert status == 200 and '<link rel="stylesheet" href="/audit/static/report.css">' in page
        status, style = await get(session, f"{audit_central.url}/audit/static/report.css", {})
        assert status == 200 and "@media print" in style
    parsed = _Rows()
    parsed.feed(page)
    assert len(parsed.rows) == 8 and parsed.rows[victim.item] is False
    assert sum(parsed.rows.values()) == 7
    assert '<td id="seed">7</td>' in page
