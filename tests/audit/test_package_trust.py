"""Who a disclosure package rests on: the central key it must be signed with (pinned, never its own), and
which disclosed custody entries the station's signed chain reaches (review findings R6, R7).

`edge verify PACKAGE_DIR` without a pinned key says ORIGIN UNPROVEN (exit 4) and prints the included key's
fingerprint; disclosed entries that a redacted line separates from every checkpoint the station signed make
it say NOT BOUND (exit 5: a station signing only every 64 entries), and a station signing each entry binds
them all, so the central's rewrite is refused; an item whose signed manifest and disclosed tags name
another case does not belong.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from edge.custody.disclosure import (
    CENTRAL_KEY_FILE,
    CHECKSUMS_FILE,
    CHECKSUMS_SIGNATURE_FILE,
    INDEX_FILE,
    tree_head_signature_parts,
)
from edge.custody.keys import StationKey, key_id_of, public_key_raw
from edge.custody.ledger import entry_hash
from edge.custody.witness import witnessed_head_payload
from tests.audit.conftest import CASE, AuditCentral
from tests.audit.test_disclosure_package import unzipped_package
from tests.tamper.stores import run_edge

LEDGER = "ledger/TEST-STATION/entries.jsonl"
CHECKPOINTS = "ledger/TEST-STATION/checkpoints.jsonl"


def central_key_fingerprint(key: Any) -> str:
    """The SHA-256 of the raw public key in groups of four hex digits, computed here independently."""
    digest = hashlib.sha256(public_key_raw(key)).hexdigest()
    return " ".join(digest[i:i + 4] for i in range(0, len(digest), 4))


def _pin(central: AuditCentral, tmp_path: Path) -> Path:
    pinned = tmp_path / "central.pub"
    pinned.write_bytes(load_signing_key(central.config).public_pem())
    return pinned


def _resign(folder: Path, sign: Any, changed: list[str]) -> None:
    """Re-list the changed files in SHA256SUMS and sign it with ``sign`` (what any central can do)."""
    sums = folder / CHECKSUMS_FILE
    lines = []
    for line in sums.read_text().splitlines():
        digest, name = line.split("  ", 1)
        if name in changed:
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        lines.append(f"{digest}  {name}")
    sums.write_text("\n".join(lines) + "\n")
    (folder / CHECKSUMS_SIGNATURE_FILE).write_bytes(sign(sums.read_bytes()))


def _ledger(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / LEDGER).read_text().splitlines()]


def _write_ledger(folder: Path, docs: list[dict[str, Any]]) -> None:
    (folder / LEDGER).write_bytes(b"".join(canonical_json(d) + b"\n" for d in docs))


async def test_a_package_that_brings_its_own_key_is_origin_unproven(audit_central: AuditCentral,
                                                                    tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    real = load_signing_key(audit_central.config)
    # Control: the agency's real key pinned from outside the package, the untouched package holds.
    pinned = run_edge("verify", "--central-key", str(_pin(audit_central, tmp_path)), str(folder))
    assert pinned.code in (0, 5) and "ORIGIN UNPROVEN" not in pinned.stdout, pinned
    unpinned = run_edge("verify", str(folder))
    assert unpinned.code == 4, unpinned
    assert "ORIGIN UNPROVEN: disclosure package" in unpinned.stdout
    assert central_key_fingerprint(real.public_key()) in unpinned.stdout
    answer = json.loads(run_edge("verify", "--json", str(folder)).stdout)
    assert answer["verdict"] == "ORIGIN UNPROVEN" and answer["exit_status"] == 4 and answer["ok"]
    # The key a station configuration pins (its trust bundle) pins it too; a foreign one is refused.
    config = tmp_path / "station.toml"
    for key, expected in ((_pin(audit_central, tmp_path), pinned.code), (_foreign_key(tmp_path), 1)):
        config.write_text(f'[station]\nid = "TEST-STATION"\nstore_dir = "{tmp_path / "store"}"\n[usb]\n'
                          f'mount_root = "{tmp_path / "media"}"\n[uplink]\ncentral_signing_key = "{key}"\n',
                          encoding="utf-8")
        by_config = run_edge("verify", "--config", str(config), str(folder))
        assert by_config.code == expected and "ORIGIN UNPROVEN" not in by_config.stdout, by_config


def _foreign_key(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.pub"
    path.write_bytes(StationKey.generate().public_pem())
    return path


async def test_a_package_built_by_a_foreign_central_is_refused_with_the_pinned_key(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    # A foreign central: its own key in the package, every tree head and the list re-signed with it.
    foreign = StationKey.generate()
    (folder / CENTRAL_KEY_FILE).write_bytes(foreign.public_pem())
    changed = [CENTRAL_KEY_FILE, INDEX_FILE]
    index = json.loads((folder / INDEX_FILE).read_text())
    index["central_key_id"] = key_id_of(foreign.public_key())
    (folder / INDEX_FILE).write_bytes(canonical_json(index))
    for item in index["items"]:
        base = f"items/{item['item']}"
        receipt = json.loads((folder / base / "receipt.json").read_text())
        payload, _ = tree_head_signature_parts(receipt["tree_head"])
        signature = foreign.sign(payload)
        receipt["tree_head"]["signature"] = base64.b64encode(signature).decode()
        receipt["tree_head"]["key_id"] = key_id_of(foreign.public_key())
        if "witnessed_head" in receipt:
            head = receipt["witnessed_head"]
            head["key_id"] = key_id_of(foreign.public_key())
            head["signature"] = base64.b64encode(foreign.sign(witnessed_head_payload(head))).decode()
        (folder / base / "receipt.json").write_bytes(canonical_json(receipt))
        (folder / base / "tree-head.sig").write_bytes(signature)
        changed += [f"{base}/receipt.json", f"{base}/tree-head.sig"]
    _resign(folder, foreign.sign, changed)
    # Self-consistent: without a pinned key nothing is wrong inside, and still it is not OK.
    unpinned = run_edge("verify", str(folder))
    assert unpinned.code == 4, unpinned
    assert central_key_fingerprint(foreign.public_key()) in unpinned.stdout
    # With the agency's key pinned: refused, naming the key file.
    refused = run_edge("verify", "--central-key", str(_pin(audit_central, tmp_path)), str(folder))
    assert refused.code == 1 and refused.names(CENTRAL_KEY_FILE), refused
    assert public_key_raw(foreign.public_key()) != public_key_raw(load_signing_key(audit_central.config)
                                                                   .public_key())


def _rewrite_entry_before_a_redacted_line(folder: Path, sign: Any, *, patch_redacted: bool) -> int:
    """What the central alone can do (review R6): rewrite a disclosed custody entry that a redacted line
    follows, re-hash the whole entries up to it, patch the redacted line's prev, re-sign the list. The
    entry is one no station checkpoint of the package reaches before that redacted line, when there is
    such an entry (a station signing every 64 entries); otherwise any (a station signing each entry)."""
    docs = _ledger(folder)
    signed = {json.loads(line)["seq"] for line in (folder / CHECKPOINTS).read_text().splitlines()}
    candidates = []
    for n, doc in enumerate(docs):
        if doc.get("redacted") or doc["type"] not in ("tagged", "wiped", "uploaded", "verified", "sealed"):
            continue
        follow = next((k for k in range(n + 1, len(docs)) if docs[k].get("redacted")), None)
        if follow is not None and not any(docs[k].get("type") == "acquired" for k in range(n, follow)):
            reached = any(docs[k]["seq"] in signed for k in range(n, follow))
            candidates.append((reached, doc["type"] != "tagged", n, follow))
    _, _, start, follow = min(candidates)
    docs[start]["data"]["by"] = "someone-else"
    for k in range(start, follow):
        if k > start:
            docs[k]["prev"] = docs[k - 1]["hash"]
        docs[k]["hash"] = entry_hash({key: docs[k][key] for key in ("seq", "time", "type", "item", "data",
                                                                    "prev")})
    if patch_redacted:
        docs[follow]["prev"] = docs[follow - 1]["hash"]
    _write_ledger(folder, docs)
    _resign(folder, sign, [LEDGER])
    return int(docs[start]["seq"])


async def test_disclosed_entries_before_a_redacted_line_are_named_not_bound(
    audit_central_every_64: AuditCentral, tmp_path: Path
) -> None:
    """A station that signs a checkpoint only every 64 entries (the old default)."""
    central = audit_central_every_64
    pinned = _pin(central, tmp_path)
    sign = load_signing_key(central.config).sign
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(central, tmp_path / "p")
    docs = _ledger(folder)
    # Which entries the station's other checkpoints bind depends on when its uplink pushed (each push ends
    # at an entry it signs); a central may ship none of them: then only the final checkpoint vouches.
    (folder / CHECKPOINTS).write_bytes(b"")
    _resign(folder, sign, [CHECKPOINTS])
    signed = {json.loads((folder / "ledger/TEST-STATION/checkpoint.json").read_text())["seq"]}  # the final
    untouched = run_edge("verify", "--central-key", str(pinned), str(folder))
    # The untouched package: no problem, but every entry of a case item from which no chain of whole
    # entries reaches a signed checkpoint before a redacted line is named; the others are not.
    assert untouched.code == 5 and "NOT BOUND: disclosure package" in untouched.stdout, untouched
    case_items = {r.item for r in central.items(CASE)}
    reached = False
    for doc in reversed(docs):
        if doc.get("redacted"):
            reached = False
            continue
        reached = reached or doc["seq"] in signed
        if doc["item"] not in case_items or doc["type"] == "acquired":
            continue
        named = f"NOT BOUND ledger/TEST-STATION seq {doc['seq']} " in untouched.stdout
        assert named == (not reached), (doc["seq"], untouched.stdout)
    # The central rewrites such an entry and patches the redacted line: never OK, the entry named.
    seq = _rewrite_entry_before_a_redacted_line(folder, sign, patch_redacted=True)
    forged = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert f"NOT BOUND ledger/TEST-STATION seq {seq} " in forged.stdout, forged
    # And when a later entry of the same item is shown, its item_prev still names the entry's old hash:
    # the item chain refuses the rewrite outright (FAILED), whatever the checkpoint cadence.
    rewritten = next(d for d in _ledger(folder) if d["seq"] == seq)
    followed = any(not d.get("redacted") and d["item"] == rewritten["item"] and d["seq"] > seq
                   for d in _ledger(folder))
    assert followed, "the scenario rewrites an entry its item's later entry links to"
    assert forged.code == 1 and any("(item_prev)" in line for line in forged.failures), forged
    # Control: without patching the redacted line's prev the chain walker refuses it.
    (tmp_path / "c").mkdir()
    control = await unzipped_package(central, tmp_path / "c")
    _rewrite_entry_before_a_redacted_line(control, sign, patch_redacted=False)
    assert run_edge("verify", "--central-key", str(pinned), str(control)).code == 1


async def test_a_station_signing_each_entry_binds_them_so_the_rewrite_is_refused(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central, tmp_path)
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    untouched = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert untouched.code == 0 and "NOT BOUND" not in untouched.stdout, untouched
    # The same rewrite, the redacted line patched, the list re-signed: the station's checkpoint at the
    # rewritten seq signs the old hash.
    seq = _rewrite_entry_before_a_redacted_line(folder, load_signing_key(audit_central.config).sign,
                                                patch_redacted=True)
    forged = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert forged.code == 1, forged
    assert any(CHECKPOINTS in line and f"at seq {seq}" in line and "the entry was altered" in line
               for line in forged.failures), forged


async def test_hidden_entries_of_disclosed_items_are_refused_or_unbound(audit_central: AuditCentral,
                                                                         tmp_path: Path) -> None:
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    tagged = audit_central.evidence.tagged_item
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    control = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert control.code == 0 and "does not belong" not in control.stdout, control
    # Every tagged, wiped, uploaded and receipt entry of the case's items shipped as a redacted line: the
    # item moved into the case by a tag no longer belongs to it (its manifest names the other case).
    docs = _ledger(folder)
    hidden = [{"seq": d["seq"], "prev": d["prev"], "hash": d["hash"], "redacted": True}
              if not d.get("redacted") and d["type"] in ("tagged", "wiped", "uploaded", "receipt") else d
              for d in docs]
    assert hidden != docs
    _write_ledger(folder, hidden)
    _resign(folder, sign, [LEDGER])
    verdict = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert verdict.code == 1 and verdict.names(f"item {tagged}"), verdict
    assert f"item {tagged}: does not belong to case {CASE}" in verdict.stdout
    # The acquired entry of a disclosed item as a redacted line: refused where the manifest points.
    (tmp_path / "q").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "q")
    docs = _ledger(folder)
    n = next(n for n, d in enumerate(docs) if not d.get("redacted") and d["type"] == "acquired")
    docs[n] = {"seq": docs[n]["seq"], "prev": docs[n]["prev"], "hash": docs[n]["hash"], "redacted": True}
    _write_ledger(folder, docs)
    _resign(folder, sign, [LEDGER])
    verdict = run_edge("verify", "--central-key", str(pinned), str(folder))
    assert verdict.code == 1 and f"ledger/TEST-STATION seq {docs[n]['seq']}: is a redacted line" in \
        verdict.stdout, verdict
