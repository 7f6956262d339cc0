"""A hostile central hides a disclosed item's later entries as redacted lines (review 4, finding 1).

Before ledger format 2 an item's forward completeness was the central's word: package.json ``coverage``
states each item's last entry, the verifier walked the item chain (``item_prev``) back from there, and links
only go backwards. So a central that stated an earlier entry of the item as its last, and shipped every
later entry (its upload, receipt, wipe; or a tag moving it into another case) as a redacted line, got OK,
exit 0. Now every entry's hash commits to a tag of its item and seq (``item_tag``), a redacted line ships
that tag and its body digest, and the verifier recomputes each redacted line's hash and tests its tag
against every disclosed item. Each attack is tried the three ways a central could redact the hidden
entries: with their true parts (the tag names the item), with a made-up tag (the hash no longer
recomputes), and in the old format-1 shape (links only: after format-2 entries that is stripping, refused).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from edge.custody.ledger import LedgerEntry, redact
from tests.audit.conftest import CASE, OTHER_CASE, AuditCentral
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.audit.test_package_item_chain import (
    CHECKPOINTS,
    LEDGER,
    STATION,
    _index,
    _package,
    _verify,
)
from tests.audit.test_package_trust import _pin
from tests.tamper.stores import Verdict

WAYS = ("true-tag", "made-up-tag", "format-1")


def _redacted(doc: Mapping[str, Any], way: str) -> dict[str, Any]:
    """The whole entry ``doc`` as a redacted line, the way a central could ship it."""
    if way == "format-1":
        return {"seq": doc["seq"], "prev": doc["prev"], "hash": doc["hash"], "redacted": True}
    line = redact(LedgerEntry(**doc))
    assert line.item_tag is not None and line.recomputed_hash() == doc["hash"]  # format 2, genuine parts
    tag = line.item_tag if way == "true-tag" else secrets.token_hex(32)
    return {"seq": line.seq, "prev": line.prev, "hash": line.hash, "redacted": True, "item_tag": tag,
            "body_sha256": line.body_sha256}


def _refused(verdict: Verdict, way: str, item: str, seqs: set[int]) -> bool:
    """What each way must give: the item and a hidden seq named; a hash that does not recompute; or no
    pass (a format-1 line after format-2 entries: stripped parts, named)."""
    if way == "true-tag":
        return verdict.code == 1 and any(f"item {item}" in line and "item's tag" in line
                                         and any(f"seq {seq}:" in line for seq in seqs)
                                         for line in verdict.failures)
    if way == "made-up-tag":
        return verdict.code == 1 and any("does not match its hash" in line for line in verdict.failures)
    # A format-1 line after format-2 entries is a format-2 entry stripped of its parts: named, refused.
    return verdict.code == 1 and any("redacted line without item_tag" in line
                                     and any(f"seq {seq}:" in line for seq in seqs)
                                     for line in verdict.failures)


@pytest.mark.parametrize("way", WAYS)
async def test_an_items_later_entries_hidden_behind_an_earlier_stated_last_entry_are_caught(
    audit_central: AuditCentral, tmp_path: Path, way: str
) -> None:
    """The case's item: its uploaded, receipt and wiped entries (everything after its sealed entry) become
    redacted lines, and package.json states its sealed entry as its last."""
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    folder = await _package(audit_central, tmp_path, "p")
    assert _verify(pinned, folder).code == 0  # control: the genuine package holds
    docs = read_lines(folder, LEDGER)
    # Not the item tagged into this case: hiding its tag would (rightly) fail its case membership.
    sealed = next(d for d in docs if not d.get("redacted") and d["item"] and d["type"] == "sealed"
                  and d["item"] != audit_central.evidence.tagged_item)
    item = sealed["item"]
    hide = [d for d in docs if not d.get("redacted") and d["item"] == item and d["seq"] > sealed["seq"]]
    assert hide, "the item has entries after its seal (upload, receipt, wipe)"
    hidden = {d["seq"] for d in hide}
    write_lines(folder, LEDGER, [_redacted(d, way) if d["seq"] in hidden else d for d in docs])
    write_lines(folder, CHECKPOINTS, [c for c in read_lines(folder, CHECKPOINTS) if c["seq"] not in hidden])
    index = _index(folder)
    index["coverage"][STATION]["item_last_seq"][item] = sealed["seq"]
    (folder / "package.json").write_bytes(canonical_json(index))
    resign_all(folder, sign)

    verdict = _verify(pinned, folder)
    assert _refused(verdict, way, item, hidden), (
        f"item {item}'s entries {[(d['seq'], d['type']) for d in hide]} hidden as redacted lines ({way}) "
        f"behind a stated last seq {sealed['seq']}:\n{verdict}")


@pytest.mark.parametrize("way", WAYS)
async def test_an_item_tagged_out_of_the_case_cannot_be_disclosed_in_it_by_stating_an_earlier_last_entry(
    audit_central: AuditCentral, tmp_path: Path, way: str
) -> None:
    """李娜's item was tagged into CASE after upload; its signed manifest still names OTHER_CASE. The
    central adds it to OTHER_CASE's package with its entries before the tag shown (with their station
    checkpoints, as in CASE's package), the tag and everything after it redacted, and states the entry
    before the tag as the item's last."""
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    tagged = audit_central.evidence.tagged_item
    case_a = await _package(audit_central, tmp_path, "a", CASE)
    case_b = await _package(audit_central, tmp_path, "b", OTHER_CASE)
    assert _verify(pinned, case_b).code == 0  # control: the genuine package of OTHER_CASE holds
    whole_a = {d["seq"]: d for d in read_lines(case_a, LEDGER) if not d.get("redacted")}
    tag_seq = next(s for s, d in whole_a.items() if d["item"] == tagged and d["type"] == "tagged")
    later = {s for s, d in whole_a.items() if d["item"] == tagged and s >= tag_seq}

    forged = Path(shutil.copytree(case_b, tmp_path / "forged"))
    docs = read_lines(forged, LEDGER)
    shown: set[int] = set()
    for n, doc in enumerate(docs):
        whole = whole_a.get(doc["seq"])
        if doc.get("redacted") and whole is not None and whole["item"] == tagged:
            if doc["seq"] < tag_seq:
                docs[n] = whole
                shown.add(doc["seq"])
            else:
                docs[n] = _redacted(whole, way)
    assert shown
    write_lines(forged, LEDGER, docs)
    cps = read_lines(forged, CHECKPOINTS) + [c for c in read_lines(case_a, CHECKPOINTS) if c["seq"] in shown]
    write_lines(forged, CHECKPOINTS, sorted(cps, key=lambda c: c["seq"]))
    shutil.copytree(case_a / f"items/{tagged}", forged / f"items/{tagged}")
    index = _index(forged)
    index["items"].append(next(i for i in _index(case_a)["items"] if i["item"] == tagged))
    index["coverage"][STATION]["item_last_seq"][tagged] = max(shown)
    (forged / "package.json").write_bytes(canonical_json(index))
    resign_all(forged, sign)

    verdict = _verify(pinned, forged)
    assert _refused(verdict, way, tagged, later), (
        f"item {tagged} (tagged into {CASE} at seq {tag_seq}) in case {OTHER_CASE}'s package, its stated "
        f"last entry seq {max(shown)}, redacted {way}:\n{verdict}")
