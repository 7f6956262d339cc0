"""`edge verify` for a central store: objects, index, station ledgers and the Merkle log, naming each problem.

A central store verifies when:

* every object in ``objects/`` hashes to its name, is where its name puts it, and is the content of an
  accepted item; nothing else lies there; every accepted item's object is present with its size;
* every item row agrees with its manifest (canonical text, hash, size, station, officer, device, times),
  the manifest is signed by a key the station was enrolled with, and it points at the `acquired` entry of
  the item in the station's accepted ledger;
* every station's accepted ledger is an unbroken hash chain from seq 1, and every stored checkpoint is
  signed by one of the station's enrolled keys over an entry the ledger holds;
* the metadata history repeats the manifest's case block and every accepted `tagged` entry, and the
  current case of each item is their fold;
* the Merkle log recomputes from its leaves (leaf hashes, stored nodes, every signed tree head), each
  item's leaf is exactly the leaf its acceptance would write, and each item's receipt can be reproduced
  against the latest tree head and verifies with the central key.

The store is opened read-only: verification never changes what it checks.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.central.config import CentralLayout
from edge.central.index import CASE_FIELDS, open_index_readonly
from edge.central.log import MerkleLog
from edge.central.objects import FileObjectStore, is_sha256_hex
from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.errors import CanonicalJsonError, KeyFileError, KeyFormatError, LedgerError
from edge.custody.keys import StationKey, key_id_of, load_public_key, public_key_from_b64, verify_signature
from edge.custody.ledger import Checkpoint, LedgerEntry, checkpoint_payload, verify_chain
from edge.custody.manifest import verify_manifest
from edge.custody.problems import Problem
from edge.custody.receipt import (
    ReceiptError,
    TreeHead,
    make_leaf_entry,
    make_receipt,
    verify_receipt,
    verify_tree_head,
)

__all__ = ["verify_central_store"]

log = logging.getLogger(__name__)

# A badly damaged store would otherwise report one line per object; past this many of one kind, count.
_MAX_LISTED = 50


def verify_central_store(
    store_dir: Path,
    *,
    central_public_key: Ed25519PublicKey | None = None,
    origin: str | None = None,
) -> list[Problem]:
    """Every problem found in the central store at ``store_dir``; an empty list means it verifies.

    ``central_public_key`` pins the signing key from elsewhere (an enrollment bundle); without it the
    store's own ``identity/signing.key.pub`` is used, which proves consistency but not origin.
    ``origin`` is the central id tree heads must name (default: the one the first signed head names).
    """
    layout = CentralLayout(Path(store_dir))
    problems: list[Problem] = []
    if not layout.index_db.is_file():
        return [Problem(f"index {layout.index_db}", "missing: this is not a central store")]
    public_key = central_public_key
    if public_key is None:
        try:
            public_key = load_public_key(layout.signing_pub)
        except KeyFileError as exc:
            problems.append(
                Problem(f"key {layout.signing_pub}", f"cannot load the central signing key: {exc}")
            )
    elif layout.signing_pub.is_file():
        try:
            stored = load_public_key(layout.signing_pub)
        except KeyFileError as exc:
            problems.append(Problem(f"key {layout.signing_pub}", str(exc)))
        else:
            if key_id_of(stored) != key_id_of(public_key):
                problems.append(
                    Problem(
                        f"key {layout.signing_pub}",
                        f"is key {key_id_of(stored)}, not the pinned central key {key_id_of(public_key)}",
                    )
                )
    conn = open_index_readonly(layout.index_db)
    try:
        _Checker(conn, layout, public_key, origin, problems).run()
    except sqlite3.DatabaseError as exc:
        problems.append(Problem(f"index {layout.index_db}", f"cannot be read: {exc}"))
    finally:
        conn.close()
    return problems


class _Checker:
    def __init__(
        self,
        conn: sqlite3.Connection,
        layout: CentralLayout,
        public_key: Ed25519PublicKey | None,
        origin: str | None,
        problems: list[Problem],
    ) -> None:
        self.conn = conn
        self.layout = layout
        self.public_key = public_key
        self.origin = origin
        self.problems = problems
        self.station_keys: dict[str, dict[str, Ed25519PublicKey]] = {}
        self.ledgers: dict[str, dict[int, LedgerEntry]] = {}

    def add(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))

    def run(self) -> None:
        self._load_station_keys()
        for station in self._stations_with_ledgers():
            self._check_ledger(station)
        merkle = self._check_merkle()
        referenced = self._check_items(merkle)
        self._check_history()
        self._check_objects(referenced)
        for table in ("access_log", "rejections", "enrolment_events", "metadata_history"):
            self._check_no_deleted_rows(table)

    def _check_no_deleted_rows(self, table: str) -> None:
        """Append-only trails number their rows 1, 2, 3...: a gap is a deleted row."""
        expected = 1
        for (row_id,) in self.conn.execute(f"SELECT id FROM {table} ORDER BY id"):
            if row_id != expected:
                missing = f"row {expected}" if row_id == expected + 1 else f"rows {expected}-{row_id - 1}"
                self.add(table, f"{missing} missing: the append-only trail was cut")
            expected = row_id + 1

    # -- stations and their ledgers ----------------------------------------------------------------

    def _load_station_keys(self) -> None:
        for row in self.conn.execute("SELECT station, key_id, public_key FROM station_keys"):
            where = f"station {row['station']} key {row['key_id']}"
            try:
                key = public_key_from_b64(row["public_key"])
            except KeyFormatError as exc:
                self.add(where, f"enrolled key is malformed: {exc}")
                continue
            if key_id_of(key) != row["key_id"]:
                self.add(where, f"the stored key has id {key_id_of(key)}: the key row was altered")
                continue
            self.station_keys.setdefault(row["station"], {})[row["key_id"]] = key
        for row in self.conn.execute("SELECT station, key_id, public_key FROM stations"):
            try:
                current_id = key_id_of(public_key_from_b64(row["public_key"]))
            except KeyFormatError:
                current_id = None
            if current_id != row["key_id"]:
                self.add(f"station {row['station']}", f"current key does not have the recorded id "
                                                      f"{row['key_id']}: the station row was altered")
            elif row["key_id"] not in self.station_keys.get(row["station"], {}):
                self.add(
                    f"station {row['station']}",
                    f"current key {row['key_id']} is not among the keys it "
                    "was enrolled with: the station row was altered",
                )

    def _stations_with_ledgers(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT station FROM station_ledger UNION SELECT station FROM station_checkpoints ORDER BY 1"
        )
        return [row[0] for row in rows]

    def _entries(self, station: str) -> Iterator[LedgerEntry]:
        for row in self.conn.execute(
            "SELECT seq, time, type, item, data, prev, hash FROM station_ledger WHERE station = ? "
            "ORDER BY seq",
            (station,),
        ):
            where = f"station {station} ledger seq {row['seq']}"
            try:
                data = parse_json(row["data"])
            except CanonicalJsonError as exc:
                self.add(where, f"data column is not valid JSON ({exc}); the row was altered")
                continue
            if not isinstance(data, dict):
                self.add(where, "data column is not a JSON object; the row was altered")
                continue
            if canonical_json(data).decode("utf-8") != row["data"]:
                self.add(where, "data column is not in canonical form: the row was rewritten")
            yield LedgerEntry(
                seq=row["seq"],
                time=row["time"],
                type=row["type"],
                item=row["item"],
                data=data,
                prev=row["prev"],
                hash=row["hash"],
            )

    def _check_ledger(self, station: str) -> None:
        keys = self.station_keys.get(station, {})
        if not keys:
            self.add(f"station {station}", "has an accepted ledger but no enrolled key")
            return
        entries = list(self._entries(station))
        self.ledgers[station] = {entry.seq: entry for entry in entries}
        # Chain linkage and content hashes; the key matters only for checkpoints, checked below per key.
        any_key = next(iter(keys.values()))
        for problem in verify_chain(entries, [], any_key, station):
            self.add(f"station {station} {problem.where}", problem.what)
        for row in self.conn.execute(
            "SELECT station, seq, hash, time, key_id, signature FROM station_checkpoints WHERE station = ? "
            "ORDER BY seq, id",
            (station,),
        ):
            self._check_checkpoint(station, dict(row), keys)

    def _check_checkpoint(
        self, station: str, row: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
    ) -> None:
        where = f"station {station} checkpoint seq {row['seq']}"
        try:
            cp = Checkpoint.from_dict(row)
        except LedgerError as exc:
            self.add(where, f"damaged row: {exc}")
            return
        key = keys.get(cp.key_id)
        if key is None:
            self.add(where, f"signed by key {cp.key_id}, which the station was never enrolled with")
            return
        try:
            signature = base64.b64decode(cp.signature.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            signature = b""
        if not verify_signature(key, signature, checkpoint_payload(cp.station, cp.seq, cp.hash, cp.time)):
            self.add(
                where, f"signature does not verify with station key {cp.key_id}: the checkpoint was altered"
            )
            return
        entry = self.ledgers.get(station, {}).get(cp.seq)
        if entry is None:
            self.add(
                where,
                f"the accepted ledger has no entry at seq {cp.seq}, which this signed checkpoint "
                "covers: entries were deleted",
            )
        elif entry.hash != cp.hash:
            self.add(
                where,
                f"signed hash {cp.hash} but the accepted entry at seq {cp.seq} has hash "
                f"{entry.hash}: the ledger was rewritten",
            )

    # -- the Merkle log ----------------------------------------------------------------------------

    def _check_merkle(self) -> MerkleLog | None:
        if self.public_key is None:
            self.add("merkle log", "not verified: no central public key to check tree heads with")
            return None
        origin = self.origin
        if origin is None:
            row = self.conn.execute("SELECT origin FROM merkle_tree_heads ORDER BY id LIMIT 1").fetchone()
            origin = str(row[0]) if row is not None and row[0] else "unknown"
        # Verification needs only the public key; the log object wants a signing key it will never use here.
        merkle = MerkleLog(self.conn, StationKey.generate(), origin)
        self.problems.extend(merkle.verify(self.public_key))
        return merkle

    # -- items -------------------------------------------------------------------------------------

    def _check_items(self, merkle: MerkleLog | None) -> dict[str, int]:
        """Check every item row; returns object sha256 -> size of the accepted items."""
        referenced: dict[str, int] = {}
        head = None
        if merkle is not None:
            head = self._usable_head(merkle)
        leaf_indexes: set[int] = set()
        for row in self.conn.execute("SELECT * FROM items ORDER BY leaf_index"):
            sha = self._check_item(dict(row), merkle, head)
            if sha is not None:
                referenced[sha] = row["size"]
            leaf_indexes.add(row["leaf_index"])
        if merkle is not None:
            size = merkle.size()
            missing = sorted(set(range(size)) - leaf_indexes)
            for index in missing[:_MAX_LISTED]:
                self.add(
                    f"merkle leaf {index}", "names an item the index does not hold: the item row was deleted"
                )
            if len(missing) > _MAX_LISTED:
                self.add("merkle log", f"{len(missing) - _MAX_LISTED} more leaves without an item row")
        return referenced

    def _usable_head(self, merkle: MerkleLog) -> TreeHead | None:
        """The latest signed head when receipts can be reproduced against it; else one problem, None."""
        try:
            head = merkle.latest_tree_head()
        except Exception as exc:  # the damaged row itself was reported by the log's verify()
            self.add("receipts", f"not reproducible: the latest tree head is damaged ({exc})")
            return None
        if head is None or self.public_key is None:
            return head
        usable = not verify_tree_head(head, self.public_key) and head.tree_size <= merkle.size()
        if usable:
            try:
                usable = merkle.root(head.tree_size) == head.root
            except Exception:
                usable = False
        if not usable:
            self.add(
                "receipts",
                f"not reproducible: the latest signed tree head (size {head.tree_size}) does not match the "
                "log (see the Merkle log problems)",
            )
            return None
        return head

    def _check_item(
        self, row: dict[str, Any], merkle: MerkleLog | None, head: TreeHead | None
    ) -> str | None:
        item = row["item"]
        where = f"item {item}"
        try:
            manifest = parse_json(row["manifest"])
        except CanonicalJsonError as exc:
            self.add(where, f"manifest column is not valid JSON ({exc})")
            return None
        if not isinstance(manifest, dict):
            self.add(where, "manifest column is not a JSON object")
            return None
        text = canonical_json(manifest).decode("utf-8")
        if text != row["manifest"]:
            self.add(where, "manifest column is not in canonical form: it was rewritten")
        if sha256_hex(row["manifest"].encode("utf-8")) != row["manifest_sha256"]:
            self.add(
                where,
                f"manifest hashes to {sha256_hex(row['manifest'].encode('utf-8'))}, the index "
                f"says {row['manifest_sha256']}",
            )
        source = _mapping(manifest.get("source"))
        time_block = _mapping(manifest.get("time"))
        chain = _mapping(manifest.get("chain"))
        expected = {
            "item": manifest.get("item"),
            "sha256": manifest.get("sha256"),
            "size": manifest.get("size"),
            "station": source.get("station"),
            "officer_no": source.get("officer_no") or None,
            "device_serial": source.get("device_serial") or None,
            "recorded_start": time_block.get("recorded_start") or None,
            "chain_seq": chain.get("seq"),
        }
        for column, value in expected.items():
            if row[column] != value:
                self.add(
                    where,
                    f"index column {column} is {str(row[column])[:80]!r} but the manifest says "
                    f"{str(value)[:80]!r}",
                )
        acquired_utc = time_block.get("acquired_utc")
        if isinstance(acquired_utc, str) and acquired_utc and row["acquired_utc"] != acquired_utc:
            self.add(
                where,
                f"index column acquired_utc is {row['acquired_utc']!r} but the manifest says "
                f"{acquired_utc!r}",
            )
        self._check_signature(where, row["station"], manifest)
        self._check_item_chain(where, row["station"], item, manifest, chain)
        if merkle is not None:
            self._check_leaf(where, row, merkle, head)
        sha = row["sha256"]
        if not is_sha256_hex(sha):
            self.add(where, f"sha256 column {str(sha)[:80]!r} is not 64 hex digits")
            return None
        return str(sha)

    def _check_signature(self, where: str, station: str, manifest: Mapping[str, Any]) -> None:
        keys = self.station_keys.get(station, {})
        if not keys:
            self.add(where, f"station {station} has no enrolled key to check the manifest with")
            return
        for problem in verify_manifest(manifest, keys):
            self.add(where, f"manifest: {problem.what}")

    def _check_item_chain(
        self, where: str, station: str, item: str, manifest: Mapping[str, Any], chain: Mapping[str, Any]
    ) -> None:
        seq = chain.get("seq")
        entry = self.ledgers.get(station, {}).get(seq) if isinstance(seq, int) else None
        if entry is None:
            self.add(
                where,
                f"the manifest names ledger seq {seq!r} of station {station}, which the accepted "
                "ledger does not hold",
            )
            return
        if entry.hash != chain.get("entry_hash") or entry.type != "acquired" or entry.item != item:
            self.add(
                where,
                f"the manifest names ledger seq {seq} with hash {str(chain.get('entry_hash'))[:64]}, "
                f"but that accepted entry is a {entry.type!r} entry for item {entry.item} with hash "
                f"{entry.hash}",
            )
        for name in ("sha256", "size"):
            if name in entry.data and entry.data[name] != manifest.get(name):
                self.add(
                    where,
                    f"the acquired entry at seq {seq} records {name} {str(entry.data[name])[:80]}, "
                    f"the manifest {str(manifest.get(name))[:80]}",
                )

    def _check_leaf(
        self, where: str, row: Mapping[str, Any], merkle: MerkleLog, head: TreeHead | None
    ) -> None:
        index = row["leaf_index"]
        try:
            stored = merkle.leaf(index)
        except Exception as exc:
            self.add(where, f"its leaf {index} cannot be read from the Merkle log: {exc}")
            return
        try:
            expected = make_leaf_entry(
                item=row["item"],
                sha256=row["sha256"],
                size=row["size"],
                station=row["station"],
                manifest_sha256=row["manifest_sha256"],
                accepted_utc=row["accepted_utc"],
            )
        except ReceiptError as exc:
            self.add(where, f"the index row cannot make a leaf: {exc}")
            return
        if stored != expected:
            differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            self.add(where, f"Merkle leaf {index} differs from the index row in {', '.join(differing)}")
            return
        if head is None or self.public_key is None:
            return
        if index >= head.tree_size:
            self.add(where, f"leaf {index} is beyond the latest signed tree head ({head.tree_size} leaves)")
            return
        try:
            receipt = make_receipt(stored, index, merkle.inclusion_proof(index, head.tree_size), head)
        except Exception as exc:
            self.add(
                where, f"its receipt cannot be reproduced against tree head size {head.tree_size}: {exc}"
            )
            return
        for problem in verify_receipt(
            receipt,
            self.public_key,
            expected_item=row["item"],
            expected_sha256=row["sha256"],
            expected_station=row["station"],
        ):
            self.add(where, f"reproduced receipt: {problem}")

    # -- metadata history ---------------------------------------------------------------------------

    def _check_history(self) -> None:
        history: dict[str, list[sqlite3.Row]] = {}
        for row in self.conn.execute("SELECT * FROM metadata_history ORDER BY item, ledger_seq, id"):
            history.setdefault(row["item"], []).append(row)
        for row in self.conn.execute("SELECT item, station, manifest FROM items ORDER BY item"):
            self._check_item_history(
                row["item"], row["station"], row["manifest"], history.pop(row["item"], [])
            )
        for item in history:
            self.add(f"item {item}", "has metadata history but no item row")

    def _check_item_history(
        self, item: str, station: str, manifest_text: str, rows: list[sqlite3.Row]
    ) -> None:
        where = f"item {item}"
        try:
            manifest = json.loads(manifest_text)
            case = manifest.get("case") or {}
        except (ValueError, AttributeError):
            return  # reported with the item
        fold: dict[str, Any] = {}
        manifest_rows = [r for r in rows if r["source"] == "manifest"]
        if len(manifest_rows) != 1:
            self.add(
                where, f"expected one metadata history row from the manifest, found {len(manifest_rows)}"
            )
        tagged = {
            e.seq: e for e in self.ledgers.get(station, {}).values() if e.type == "tagged" and e.item == item
        }
        for row in rows:
            changes = _json_object(row["changes"])
            if changes is None:
                self.add(
                    where, f"metadata history row at ledger seq {row['ledger_seq']} is not a JSON object"
                )
                continue
            if row["source"] == "manifest":
                expected = {k: v for k, v in case.items() if k in CASE_FIELDS}
                if any(changes.get(k) != v for k, v in expected.items() if k in changes) or set(
                    changes
                ) - set(expected):
                    self.add(
                        where, "the manifest's metadata history row differs from the manifest's case block"
                    )
            else:
                entry = tagged.pop(row["ledger_seq"], None)
                entry_changes = entry.data.get("changes") if entry is not None else None
                if not isinstance(entry_changes, dict):
                    self.add(
                        where,
                        f"metadata history row names tagged ledger seq {row['ledger_seq']}, which "
                        "the accepted ledger does not hold",
                    )
                    continue
                if any(entry_changes.get(k) != v for k, v in changes.items()):
                    self.add(
                        where,
                        f"metadata history row at ledger seq {row['ledger_seq']} differs from the "
                        "tagged ledger entry",
                    )
            fold.update(changes)
        for seq in sorted(tagged):
            self.add(
                where, f"the accepted tagged entry at ledger seq {seq} is missing from the metadata history"
            )
        current = self.conn.execute(
            f"SELECT {', '.join(CASE_FIELDS)} FROM item_case WHERE item = ?", (item,)
        ).fetchone()
        if current is None:
            self.add(where, "has no current case row")
            return
        for name in CASE_FIELDS:
            value = current[name]
            if name == "important" and value is not None:
                value = bool(value)
            if name in fold and fold[name] != value:
                self.add(
                    where,
                    f"current case {name} is {str(value)[:80]!r} but its metadata history folds to "
                    f"{str(fold[name])[:80]!r}",
                )

    # -- objects -------------------------------------------------------------------------------------

    def _check_objects(self, referenced: dict[str, int]) -> None:
        objects_dir = self.layout.objects_dir
        if not objects_dir.is_dir():
            if referenced:
                self.add(f"objects {objects_dir}", f"missing, with {len(referenced)} accepted items")
            return
        store = FileObjectStore(objects_dir)
        listed = 0
        for path in store.unexpected():
            listed += 1
            if listed <= _MAX_LISTED:
                self.add(
                    f"object {path.relative_to(objects_dir)}",
                    "unexpected: not an object stored under its SHA-256 name (planted, or left by a crash)",
                )
        if listed > _MAX_LISTED:
            self.add("objects", f"{listed - _MAX_LISTED} more unexpected files")
        present = set()
        for name in store.names():
            present.add(name)
            problem = store.verify(name)
            if problem is not None:
                self.add(f"object {name}", problem)
            elif name not in referenced:
                self.add(
                    f"object {name}",
                    "no accepted item references it (left by an interrupted registration or planted)",
                )
            elif store.size_bytes(name) != referenced[name]:
                self.add(
                    f"object {name}", f"has {store.size_bytes(name)} bytes, the item says {referenced[name]}"
                )
        for name in sorted(set(referenced) - present):
            self.add(f"object {name}", "missing: an accepted item's content is gone")


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(text: object) -> dict[str, Any] | None:
    try:
        doc = parse_json(text) if isinstance(text, str) else None
    except CanonicalJsonError:
        return None
    return doc if isinstance(doc, dict) else None
