"""What the console's item page shows, computed on the server: the custody timeline and the receipt check.

**Timeline.** One row per event in the item's custody, oldest first: the station ledger entries the
central holds for the item (acquired, verified, sealed, tagged, queued, uploaded, receipt, wiped, purged,
errors...; the station's own times), the central's acceptance, every read on the access log (console and
API, by whom, from where) and every sensitive marking. Who read and from where is shown to supervisors
and to a reader for its own reads only (as on the access-log page): another reader's read shows as
``read:...`` with its time and no name, address or byte count, so a reader sees that and when the item
was read, not by whom. Each row has ``time``, ``event``, ``station`` (or
``central``), ``who`` (the officer for acquisition, the operator or reader for the rest, when known) and
``detail``. Device text (names, paths) is escaped with :func:`edge.custody.text.printable`; the page
puts every value in with ``textContent``.

**Receipt.** The central makes the item's receipt against its current signed tree head and checks it
as a station or a court expert would, with the central's public key, and against its own log: the tree
head's signature, the leaf names this item (id, content SHA-256, size, station, manifest SHA-256 as
indexed), the inclusion proof leads from the leaf to the signed root, the head is one the log stored,
and (receipt/2) the station's witnessed head. Each check is reported with its outcome, so the page says
what "verified" means.
"""

from __future__ import annotations

from typing import Any

from edge.central.app import CentralParts
from edge.central.index import ItemRecord, ReaderScope, Role
from edge.custody.receipt import verify_receipt
from edge.custody.text import printable

__all__ = ["custody_timeline", "receipt_check"]

# Ledger entry data fields that name a person, in the order they are preferred.
_PEOPLE_FIELDS = ("by", "operator", "collector")
_DETAIL_FIELDS = (
    "bay",
    "device_serial",
    "size",
    "sha256",
    "code",
    "detail",
    "reason",
    "policy",
    "leaf_index",
    "upload",
    "changes",
)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return printable(text[:300])


def custody_timeline(parts: CentralParts, record: ItemRecord, viewer: ReaderScope) -> list[dict[str, Any]]:
    """The item's custody rows, oldest first, as ``viewer`` may see them (see the module's docstring)."""
    rows: list[dict[str, Any]] = []
    found = record.manifest.get("source")
    source: dict[str, Any] = found if isinstance(found, dict) else {}
    officer = " ".join(str(v) for v in (source.get("officer_name"), source.get("officer_no")) if v)
    for entry in parts.index.ledger_entries(record.station, item=record.item):
        who = next((entry.data[f] for f in _PEOPLE_FIELDS if isinstance(entry.data.get(f), str)), None)
        if entry.type == "acquired" and who is None:
            who = officer or None
        detail = {f: _show(entry.data[f]) for f in _DETAIL_FIELDS if f in entry.data}
        rows.append(
            {
                "time": entry.time,
                "event": entry.type,
                "station": record.station,
                "who": None if who is None else _show(who),
                "detail": detail,
                "seq": entry.seq,
            }
        )
    rows.append(
        {
            "time": record.accepted_utc,
            "event": "accepted",
            "station": "central",
            "who": None,
            "detail": {"leaf_index": str(record.leaf_index)},
            "seq": None,
        }
    )
    for event in parts.console.sensitivity_events(record.item):
        rows.append(
            {
                "time": event["time"],
                "event": f"sensitive_{event['action']}",
                "station": "central",
                "who": event["by"],
                "detail": {"reason": _show(event["reason"]), "readers": " ".join(event["readers"])},
                "seq": None,
            }
        )
    sees_readers = viewer.role is Role.SUPERVISOR
    for read in parts.index.access_log(item=record.item):
        identified = sees_readers or read["reader"] == viewer.reader
        detail = {}
        if identified:
            detail["remote"] = read["remote"] or ""
            if read["bytes_served"] is not None:
                detail["bytes"] = str(read["bytes_served"])
        rows.append(
            {
                "time": read["time"],
                "event": f"read:{read['what']}",
                "station": "central",
                "who": read["reader"] if identified else None,
                "detail": detail,
                "seq": None,
            }
        )
    rows.sort(key=lambda row: row["time"])
    return rows


def receipt_check(parts: CentralParts, record: ItemRecord) -> dict[str, Any]:
    """``{"verified": bool, "checks": [{"check", "ok", "detail"}], "receipt": {...} | None}``."""
    receipt = parts.registrar.receipt_for(record.item)
    if receipt is None:
        return {
            "verified": False,
            "checks": [{"check": "receipt", "ok": False, "detail": "the log has no leaf for this item"}],
            "receipt": None,
        }
    doc = receipt.to_dict()
    key = parts.signing_key
    problems = verify_receipt(
        doc,
        key.public_key(),
        expected_item=record.item,
        expected_sha256=record.sha256,
        expected_station=record.station,
    )
    by_area: dict[str, list[str]] = {}
    for problem in problems:
        where = problem.where
        area = (
            "signature"
            if where.startswith("receipt.tree_head")
            else "witnessed"
            if where.startswith("receipt.witnessed_head")
            else "proof"
            if where.startswith(("receipt.inclusion_proof", "receipt.tree_size", "receipt.leaf_index"))
            else "leaf"
        )
        by_area.setdefault(area, []).append(str(problem))
    leaf = doc["leaf"]
    stored_leaf = parts.merkle.leaf(record.leaf_index)
    leaf_matches = (
        stored_leaf == leaf
        and leaf.get("manifest_sha256") == record.manifest_sha256
        and leaf.get("size") == record.size
    )
    head = doc["tree_head"]
    with parts.index.transaction():
        head_stored = parts.merkle.store.head_signed(head["tree_size"], head["root_hash"])
    checks = [
        {
            "check": "signature",
            "ok": "signature" not in by_area,
            "detail": f"tree head of {head['tree_size']} leaves signed by the central key {key.key_id}"
            + ("" if "signature" not in by_area else ": " + "; ".join(by_area["signature"])),
        },
        {
            "check": "leaf",
            "ok": "leaf" not in by_area and leaf_matches,
            "detail": f"leaf {record.leaf_index} names item {record.item}, SHA-256 {record.sha256}, "
            f"{record.size} bytes, station {record.station}, manifest SHA-256 {record.manifest_sha256}"
            + ("" if leaf_matches else "; the log's stored leaf differs"),
        },
        {
            "check": "inclusion_proof",
            "ok": "proof" not in by_area,
            "detail": f"{len(doc['inclusion_proof'])} hashes from the leaf to root {head['root_hash']}"
            + ("" if "proof" not in by_area else ": " + "; ".join(by_area["proof"])),
        },
        {
            "check": "tree_head_in_log",
            "ok": head_stored,
            "detail": "the signed head is one the central's log stored"
            if head_stored
            else "the central's log holds no such head",
        },
    ]
    if "witnessed_head" in doc:
        checks.append(
            {
                "check": "witnessed_head",
                "ok": "witnessed" not in by_area,
                "detail": f"the station's ledger head {doc['witnessed_head'].get('seq')} as the central "
                "witnessed it"
                + ("" if "witnessed" not in by_area else ": " + "; ".join(by_area["witnessed"])),
            }
        )
    return {"verified": all(check["ok"] for check in checks), "checks": checks, "receipt": doc}
