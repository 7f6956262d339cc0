"""A package shows every custody entry of each disclosed item (review finding 1, hostile central).

The station chains each item's entries on their own (``data.item_prev``: the hash of the item's previous
entry) and the central states in package.json, under its signature, the station ledger head it held and
each disclosed item's last entry. Every test here rewrites a genuine package (built by the audit central
from a real station's evidence) the way only the central can, re-signs SHA256SUMS with the central's key,
and runs the real `edge verify --central-key` as a subprocess: hiding an item's entry as a redacted line,
cutting the segment before its later entries, or moving an item into a case it was tagged out of is
refused naming the item and the seq. The control is the genuine package of each of two interleaved cases.
A package of a station that wrote no item chain (entries before the upgrade) is NOT COMPLETE (exit 6).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from edge.custody.ledger import Ledger, checkpoint_payload
from tests.audit.conftest import CASE, OTHER_CASE, AuditCentral, StationEvidence, _audit_central, _run_station
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.audit.test_disclosure_package import unzipped_package
from tests.audit.test_package_trust import _pin
from tests.tamper.stores import Verdict, run_edge

STATION = "TEST-STATION"
LEDGER = f"ledger/{STATION}/entries.jsonl"
CHECKPOINTS = f"ledger/{STATION}/checkpoints.jsonl"
CHECKPOINT = f"ledger/{STATION}/checkpoint.json"
VERIFY_NOT_COMPLETE = 6





def _set_final_checkpoint(folder: Path, cp: Mapping[str, Any]) -> None:
    (folder / CHECKPOINT).write_bytes(canonical_json(dict(cp)))
    (folder / f"ledger/{STATION}/checkpoint.payload").write_bytes(
        checkpoint_payload(cp["station"], cp["seq"], cp["hash"], cp["time"]))
    (folder / f"ledger/{STATION}/checkpoint.sig").write_bytes(base64.b64decode(cp["signature"]))


def _redacted(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"seq": doc["seq"], "prev": doc["prev"], "hash": doc["hash"], "redacted": True}


def _index(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "package.json").read_text())
    return doc


def _verify(pinned: Path, folder: Path) -> Verdict:
    return run_edge("verify", "--central-key", str(pinned), str(folder))


async def _package(central: AuditCentral, tmp_path: Path, name: str, case: str = CASE) -> Path:
    (tmp_path / name).mkdir()
    return await unzipped_package(central, tmp_path / name, case)


def _fail_naming(verdict: Verdict, item: str, seq: int) -> bool:
    return any(f"item {item}" in line and f"seq {seq}" in line for line in verdict.failures)


async def test_both_interleaved_cases_verify_ok_and_state_their_coverage(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    """Control: the genuine packages hold, each item's entries are all shown (their item chain is whole),
    and the verdict says what the package does not cover and whose word the coverage is."""
    pinned = _pin(audit_central, tmp_path)
    head = audit_central.index.ledger_head(STATION)
    for case in (CASE, OTHER_CASE):
        folder = await _package(audit_central, tmp_path, case, case)
        coverage = _index(folder)["coverage"][STATION]
        assert (coverage["head_seq"], coverage["head_hash"]) == head
        docs = read_lines(folder, LEDGER)
        for item in (i["item"] for i in _index(folder)["items"]):
            held = [e.seq for e in audit_central.index.ledger_entries(STATION, item=item)]
            assert coverage["item_last_seq"][item] == held[-1]
            assert {d["seq"] for d in docs if not d.get("redacted") and d["item"] == item} == set(held)
        verdict = _verify(pinned, folder)
        assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
        assert f"station {STATION} up to seq {head[0]}, which the station signed" in verdict.stdout
        assert "Entries the station wrote after that are not covered" in verdict.stdout
        assert "the central's signed statement" in verdict.stdout
        assert docs[-1]["seq"] == head[0]  # the segment runs to the head, whatever case its last entry is
        # The plain-language page says the same, in both languages, with the head it covers.
        page = (folder / "README.html").read_text(encoding="utf-8")
        text = (folder / "VERIFY.txt").read_text(encoding="utf-8")
        for said in (page, text):
            assert f"up to seq {head[0]}" in said and f"至序号 {head[0]}" in said
            assert "entries after that head are not covered" in said and "中心签名的声明" in said


async def test_entries_of_a_disclosed_item_hidden_as_redacted_lines_are_named(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    """Wiped, uploaded and receipt entries of the case's items shipped as redacted lines: they still link
    into the station chain, but the item's next entry names their hash as its item_prev."""
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    folder = await _package(audit_central, tmp_path, "p")
    docs = read_lines(folder, LEDGER)
    victim = next(d for d in docs if not d.get("redacted") and d["item"] and d["type"] == "uploaded")
    item = victim["item"]
    later = [d for d in docs if not d.get("redacted") and d["item"] == item and d["seq"] > victim["seq"]]
    assert later, "the item has entries after its upload (its receipt, its wipe)"
    write = [_redacted(d) if d["seq"] == victim["seq"] else d for d in docs]
    write_lines(folder, LEDGER, write)
    kept = [c for c in read_lines(folder, CHECKPOINTS) if c["seq"] != victim["seq"]]
    write_lines(folder, CHECKPOINTS, kept)
    resign_all(folder, sign)
    verdict = _verify(pinned, folder)
    assert verdict.code == 1, verdict
    assert _fail_naming(verdict, item, victim["seq"]), verdict
    assert "hidden" in verdict.stdout

    # Its last entry hidden too (nothing links to it: the central's stated last seq does).
    last = later[-1]
    write = [_redacted(d) if d["seq"] == last["seq"] else d for d in read_lines(folder, LEDGER)]
    write_lines(folder, LEDGER, write)
    write_lines(folder, CHECKPOINTS, [c for c in read_lines(folder, CHECKPOINTS) if c["seq"] != last["seq"]])
    resign_all(folder, sign)
    verdict = _verify(pinned, folder)
    assert verdict.code == 1 and _fail_naming(verdict, item, last["seq"]), verdict


async def test_a_segment_cut_before_an_items_later_entries_is_named(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    """checkpoint.json can be the checkpoint of any shown seq: the central ends the segment after the
    items' sealed entries, dropping their receipts and wipes; the stated last entry is then missing."""
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    folder = await _package(audit_central, tmp_path, "p", OTHER_CASE)
    docs = read_lines(folder, LEDGER)
    sealed = max(d["seq"] for d in docs if not d.get("redacted") and d["type"] in ("acquired", "sealed"))
    cps = {c["seq"]: c for c in read_lines(folder, CHECKPOINTS)}
    cut = min(s for s in cps if s >= sealed)
    dropped = [d for d in docs if d["seq"] > cut and not d.get("redacted") and d["item"]]
    assert dropped, "entries of disclosed items lie after the cut"
    write_lines(folder, LEDGER, [d for d in docs if d["seq"] <= cut])
    write_lines(folder, CHECKPOINTS, [c for s, c in sorted(cps.items()) if s <= cut])
    _set_final_checkpoint(folder, cps[cut])
    resign_all(folder, sign)
    verdict = _verify(pinned, folder)
    assert verdict.code == 1, verdict
    stated = _index(folder)["coverage"][STATION]["item_last_seq"]
    for item in {d["item"] for d in dropped}:
        assert _fail_naming(verdict, item, stated[item]), verdict
    assert "stops before the item's later entries" in verdict.stdout


async def test_an_item_tagged_out_of_the_case_cannot_be_disclosed_in_it(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    """李娜's item was tagged into CASE after upload; its signed manifest still names OTHER_CASE. The
    central adds it to OTHER_CASE's package with its entries before the tag shown (and their station
    checkpoints), the tag left a redacted line. With the item's stated last entry (the central's own, or
    left out) the package is refused naming the item and the tag's seq: the redacted line carries the
    item's tag."""
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    tagged = audit_central.evidence.tagged_item
    case_a = await _package(audit_central, tmp_path, "a", CASE)
    case_b = await _package(audit_central, tmp_path, "b", OTHER_CASE)
    whole_a = {d["seq"]: d for d in read_lines(case_a, LEDGER) if not d.get("redacted")}
    tag_seq = next(s for s, d in whole_a.items() if d["item"] == tagged and d["type"] == "tagged")
    assert _verify(pinned, case_b).code == 0  # control: the genuine package of OTHER_CASE holds
    stated_a = _index(case_a)["coverage"][STATION]["item_last_seq"][tagged]
    assert stated_a >= tag_seq

    for variant in ("stated", "unstated"):
        forged = Path(shutil.copytree(case_b, tmp_path / f"forged-{variant}"))
        docs = read_lines(forged, LEDGER)
        shown = set()
        for n, doc in enumerate(docs):
            whole = whole_a.get(doc["seq"])
            if doc.get("redacted") and whole is not None and whole["item"] == tagged and doc["seq"] < tag_seq:
                docs[n] = whole
                shown.add(doc["seq"])
        assert shown and tag_seq not in shown
        write_lines(forged, LEDGER, docs)
        borrowed = [c for c in read_lines(case_a, CHECKPOINTS) if c["seq"] in shown]
        cps = read_lines(forged, CHECKPOINTS) + borrowed
        write_lines(forged, CHECKPOINTS, sorted(cps, key=lambda c: c["seq"]))
        shutil.copytree(case_a / f"items/{tagged}", forged / f"items/{tagged}")
        index = _index(forged)
        index["items"].append(next(i for i in _index(case_a)["items"] if i["item"] == tagged))
        if variant == "stated":
            index["coverage"][STATION]["item_last_seq"][tagged] = stated_a
        (forged / "package.json").write_bytes(canonical_json(index))
        resign_all(forged, sign)
        verdict = _verify(pinned, forged)
        assert verdict.code == 1, (variant, verdict)
        assert _fail_naming(verdict, tagged, tag_seq) and "item's tag" in verdict.stdout, verdict
        if variant == "stated":
            assert _fail_naming(verdict, tagged, stated_a), verdict
        else:
            assert any(f"item {tagged}" in line and "no last entry" in line for line in verdict.failures), \
                verdict


async def test_a_package_without_stated_coverage_is_not_complete(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    """A package as centrals built them before they stated coverage: every check holds, but nothing says
    the items' entries are all there: NOT COMPLETE, never OK."""
    pinned = _pin(audit_central, tmp_path)
    folder = await _package(audit_central, tmp_path, "p")
    index = _index(folder)
    del index["coverage"]
    (folder / "package.json").write_bytes(canonical_json(index))
    resign_all(folder, load_signing_key(audit_central.config).sign)
    verdict = _verify(pinned, folder)
    assert verdict.code == VERIFY_NOT_COMPLETE and "NOT COMPLETE" in verdict.stdout, verdict
    assert not verdict.failures and "chain not recorded" in verdict.stdout


_BUILT_WITHOUT_ITEM_CHAIN: list[StationEvidence] = []


@pytest.fixture(scope="module")
def station_evidence_without_item_chain(tmp_path_factory: pytest.TempPathFactory) -> StationEvidence:
    """The same run by a station from before the item chain: its ledger writes no item_prev (the append
    of that version, put back for the run; the rest of the station and the central are today's)."""
    if not _BUILT_WITHOUT_ITEM_CHAIN:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Ledger, "_with_item_prev", lambda self, item, data: dict(data))
            root = tmp_path_factory.mktemp("station-evidence-old-ledger")
            _BUILT_WITHOUT_ITEM_CHAIN.append(asyncio.run(_run_station(root)))
    return _BUILT_WITHOUT_ITEM_CHAIN[0]


@pytest.fixture
async def old_ledger_central(tmp_path: Path, station_evidence_without_item_chain: StationEvidence
                             ) -> AsyncIterator[AuditCentral]:
    async for central in _audit_central(tmp_path, station_evidence_without_item_chain):
        yield central


async def test_items_of_a_ledger_without_item_chain_are_not_complete(
    old_ledger_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(old_ledger_central, tmp_path)
    folder = await _package(old_ledger_central, tmp_path, "p")
    assert not any("item_prev" in d.get("data", {}) for d in read_lines(folder, LEDGER))
    verdict = _verify(pinned, folder)
    assert verdict.code == VERIFY_NOT_COMPLETE, verdict
    assert "NOT COMPLETE" in verdict.stdout and "chain not recorded" in verdict.stdout
    assert not verdict.failures, verdict
    for item in (i["item"] for i in _index(folder)["items"]):
        assert f"NOT COMPLETE item {item}" in verdict.stdout
