"""`edge verify`: check a sealed file, one item, or a whole station store, naming every problem.

A store verifies when: the ledger chain and its signed checkpoints hold; every sealed item's stored
object hashes to its manifest, its manifest is signed by the station key, agrees with the ledger's
`acquired` and `sealed` entries and with the item index; every stored central receipt agrees with the
ledger's `receipt` entry (and verifies in full when the central's key is given); an item purged after
its receipt keeps a verifying signed manifest; the item index's device, officer and acquisition time
agree with the sealed record, and the receipt state.db keeps with the receipt file; nothing in items/ is
unaccounted for, and nothing lies in the store root, keys/ or tmp/ that a station does not write (a copy
in progress is tmp/<item>.part of an acquisition under way); and the ledger still holds every head the
central witnessed (`edge.verify.witness`: the heads kept in the store and, when the station's
configuration names the central, the central's own); and each room session's joined file is the sealed
segments its `joined` entry names, in order, packet count for packet count (`edge.verify.joined`), and
its newest products (the set made from its newest sealed manifest) are complete, every disc exported
having carried the newest set of its time (`edge.verify.room_products`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, parse_json, sha256_hex
from edge.custody.errors import CanonicalJsonError
from edge.custody.keys import key_id_of, load_public_key
from edge.custody.keyschedule import KeySchedule
from edge.custody.ledger import ledger_key_schedule, verify_ledger
from edge.custody.manifest import verify_manifest
from edge.custody.problems import Problem
from edge.custody.receipt import verify_receipt
from edge.custody.seal import verify_sealed_file
from edge.ingest.repository import AcquisitionState, open_rebuild
from edge.ingest.store import StoreLayout, read_station_id
from edge.verify.joined import joined_findings
from edge.verify.room_products import products_findings
from edge.verify.witness import CentralView, witness_findings


@dataclass
class VerifyReport:
    target: str
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # What could not be checked, and why (not a failure: the checks that ran are in `checked`).
    notes: list[str] = field(default_factory=list)
    # The newest seq the ledger still shares with what the central witnessed, when it no longer holds a
    # witnessed head (None when it holds them all): where to compare it with the central's copy.
    diverged_after: int | None = None
    # Checks that held but prove less than they seem, by kind ("origin": a package whose central key was
    # not pinned; "binding": disclosed custody entries the station's signed chain does not reach), each
    # with its reason: `edge verify` gives them their own verdicts and exit statuses, never a plain OK.
    unproven: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "checked": self.checked,
            "problems": [{"where": p.where, "what": p.what} for p in self.problems],
            "notes": list(self.notes),
            "unproven": dict(self.unproven),
        }


def is_store(path: Path) -> bool:
    return path.is_dir() and (path / "state.db").is_file()


def find_store_of(path: Path) -> Path | None:
    """The station store a file lies in, if any (so a sealed file is checked against its station key)."""
    for parent in path.resolve().parents:
        if is_store(parent):
            return parent
    return None


def _open_readonly(db: Path) -> sqlite3.Connection:
    # Read-only and immutable-free: verification must never change the store it checks.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def verify_file(path: Path, trusted_key: Ed25519PublicKey | None = None) -> VerifyReport:
    report = VerifyReport(str(path))
    trusted: dict[str, Ed25519PublicKey] | None = None
    if trusted_key is None:
        store = find_store_of(path)
        if store is not None:
            trusted_key = load_public_key(StoreLayout(store).public_key)
            trusted = _store_keys(store, trusted_key, report)
    if trusted is None and trusted_key is not None:
        trusted = {key_id_of(trusted_key): trusted_key}
    result = verify_sealed_file(path, trusted)
    report.checked["objects"] = 1
    report.problems.extend(result.problems)
    if trusted is None and result.manifest is not None:
        report.problems.append(
            Problem(
                f"object {path}",
                "signature checked against the key embedded in the "
                "manifest only; give --key or verify inside the store to pin it",
            )
        )
    return report


def _store_keys(
    store: Path, current: Ed25519PublicKey, report: VerifyReport
) -> dict[str, Ed25519PublicKey]:
    """Every key the store's ledger announces (a file sealed before a rotation is signed by an older one)."""
    layout = StoreLayout(store)
    conn = _open_readonly(layout.db)
    try:
        keys, problems = ledger_key_schedule(conn, current, f"key {layout.public_key}")
    finally:
        conn.close()
    report.problems.extend(problems)
    return keys.trusted()


def is_receipt_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(".receipt.json")


def verify_receipt_file(
    path: Path, central_key: Ed25519PublicKey, content: Path | None = None
) -> VerifyReport:
    """A receipt on its own (as an auditor receives it): the central's signature on the tree head, the
    inclusion proof of the item's leaf, and optionally that `content` is the receipted bytes."""
    report = VerifyReport(f"receipt {path}")
    try:
        receipt = parse_json(path.read_bytes())
    except (OSError, CanonicalJsonError, ValueError) as exc:
        report.problems.append(Problem(f"receipt {path}", f"unreadable: {exc}"))
        return report
    report.problems.extend(verify_receipt(receipt, central_key))
    report.checked["receipts"] = 1
    if content is not None and isinstance(receipt, dict):
        digest = hashlib.sha256()
        size = 0
        try:
            with content.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            report.problems.append(Problem(f"content {content}", f"unreadable: {exc.strerror}"))
            return report
        leaf = receipt.get("leaf") if isinstance(receipt.get("leaf"), dict) else {}
        assert isinstance(leaf, dict)
        if digest.hexdigest() != receipt.get("sha256") or size != leaf.get("size"):
            report.problems.append(
                Problem(
                    f"content {content}",
                    f"SHA-256 {digest.hexdigest()} ({size} bytes) is not the receipted "
                    f"{str(receipt.get('sha256'))[:64]} ({str(leaf.get('size'))[:20]} bytes)",
                )
            )
        report.checked["content_bytes"] = size
    return report


def verify_store(
    root: Path,
    only_item: str | None = None,
    *,
    pinned_key: Ed25519PublicKey | None = None,
    central_key: Ed25519PublicKey | None = None,
    central_view: CentralView | None = None,
) -> VerifyReport:
    """Verify a station store. `pinned_key` is the station key as known from elsewhere (enrolment, the
    central): without it the store's own public key is used, which proves consistency but not origin.
    `central_key` (the central's signing key from the enrollment bundle) makes every stored receipt and
    witnessed head verify in full; without it receipts are checked against the ledger only.
    `central_view` is what the central said about this station's ledger (`fetch_central_view`)."""
    layout = StoreLayout(root)
    report = VerifyReport(str(root) if only_item is None else f"item {only_item}")
    store_key: Ed25519PublicKey | None
    try:
        store_key = load_public_key(layout.public_key)
    except Exception as exc:
        report.problems.append(
            Problem(f"key {layout.public_key}", f"cannot load the station public key: {exc}")
        )
        if pinned_key is None:
            return report
        store_key = None
    public_key = pinned_key if pinned_key is not None else store_key
    assert public_key is not None
    if not layout.db.is_file():
        report.problems.append(Problem(f"database {layout.db}", "missing"))
        return report
    conn = _open_readonly(layout.db)
    try:
        station = read_station_id(conn) or ""
        # Keys rotated with `edge keys rotate` are announced in the ledger; each signed what was sealed
        # while it was in force. The anchor (pinned, or the store's key file) must be one of them, and
        # the store's key file must hold the key now in force.
        anchor_name = "the pinned station key" if pinned_key is not None else f"key {layout.public_key}"
        keys, key_problems = ledger_key_schedule(conn, public_key, anchor_name)
        report.problems.extend(key_problems)
        if store_key is not None and key_id_of(store_key) != keys.current.key_id:
            what = "pinned station key" if not keys.rotations else "ledger's current key"
            report.problems.append(
                Problem(
                    f"key {layout.public_key}",
                    f"the store's key {key_id_of(store_key)} is not the {what} {keys.current.key_id}",
                )
            )
        if only_item is None:
            report.problems.extend(verify_ledger(conn, keys, station))
            report.checked["ledger_entries"] = int(conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
            report.checked["entries_after_last_checkpoint"] = _unsigned_tail(conn)
        items = _sealed_items(conn, only_item, report.problems)
        if only_item is not None and not items:
            report.problems.append(Problem(f"item {only_item}", "no such sealed item in the store"))
        known_paths: set[str] = set()
        receipts = 0
        for item in items:
            report.problems.extend(_verify_item(conn, layout, item, _signer_at(keys, item.seq)))
            known_paths.add(item.ledger_path)
            receipt_problems, had_receipt = _receipt_problems(conn, layout, item, central_key, station)
            report.problems.extend(receipt_problems)
            receipts += had_receipt
        report.checked["items"] = len(items)
        report.checked["receipts"] = receipts
        report.checked["purged"] = sum(1 for item in items if item.purged)
        if only_item is None:
            report.problems.extend(_unaccounted(conn, layout, known_paths))
            report.problems.extend(_unexpected_files(conn, layout, report.notes))
            joined = joined_findings(conn, layout, shutil.which("ffprobe"))
            report.problems.extend(joined.problems)
            report.notes.extend(joined.notes)
            report.checked["joined"] = joined.checked
            products = products_findings(conn)
            report.problems.extend(products.problems)
            report.notes.extend(products.notes)
            report.checked["room_products"] = products.checked
            findings = witness_findings(
                conn, layout, station, key_id_of(public_key), central_key, central_view
            )
            report.problems.extend(findings.problems)
            report.notes.extend(findings.notes)
            report.checked.update(findings.checked)
            report.diverged_after = findings.diverged_after
    finally:
        conn.close()
    return report


def _signer_at(keys: KeySchedule, seq: int) -> dict[str, Ed25519PublicKey]:
    """The key a manifest sealed at ledger ``seq`` must be signed with: the one in force then."""
    key = keys.in_force_at(seq)
    return {key.key_id: key.public_key}


def _unsigned_tail(conn: sqlite3.Connection) -> int:
    """Entries after the newest signed checkpoint: consistent, but covered by no signature yet."""
    head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
    signed = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger_checkpoints").fetchone()[0]
    return max(0, int(head) - int(signed))


@dataclass(frozen=True)
class _SealedItem:
    item: str
    seq: int
    ledger_path: str
    manifest_sha256: str
    index: sqlite3.Row | None
    purged: bool = False  # the local copy was deleted after the central's receipt (retention)


def _ledger_data(raw: object, seq: int, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        problems.append(Problem(f"ledger seq {seq}", "data is not a JSON object"))
        return None
    return data


def _sealed_items(conn: sqlite3.Connection, only: str | None, problems: list[Problem]) -> list[_SealedItem]:
    """Items the ledger says were sealed, with their index rows (a deleted index row is a problem)."""
    query = "SELECT seq, item, data FROM ledger WHERE type = 'sealed'"
    args: tuple[str, ...] = ()
    if only is not None:
        query += " AND item = ?"
        args = (only,)
    found: list[_SealedItem] = []
    for seq, item, raw in conn.execute(query + " ORDER BY seq", args).fetchall():
        data = _ledger_data(raw, seq, problems)
        if data is None:
            continue
        path, manifest_sha = data.get("path"), data.get("manifest_sha256")
        if not isinstance(item, str) or not isinstance(path, str) or not isinstance(manifest_sha, str):
            problems.append(Problem(f"ledger seq {seq}", "sealed entry without item, path or manifest hash"))
            continue
        index = conn.execute(
            "SELECT path, sha256, size, sealed_in_file, manifest, device_serial, officer_no, acquired "
            "FROM items WHERE item=?",
            (item,),
        ).fetchone()
        purged = conn.execute(
            "SELECT 1 FROM ledger WHERE item=? AND type='purged' AND seq > ? AND EXISTS (SELECT 1 FROM "
            "ledger AS r WHERE r.item=ledger.item AND r.type='receipt' AND r.seq < ledger.seq)",
            (item, seq),
        ).fetchone()
        found.append(_SealedItem(item, int(seq), path, manifest_sha, index, purged is not None))
    return found


def _verify_item(
    conn: sqlite3.Connection, layout: StoreLayout, sealed: _SealedItem, trusted: dict[str, Ed25519PublicKey]
) -> list[Problem]:
    where = f"item {sealed.item}"
    problems: list[Problem] = []
    index = sealed.index
    if index is None:
        problems.append(Problem(where, "sealed in the ledger but missing from the item index"))
    elif index["path"] != sealed.ledger_path:
        problems.append(
            Problem(where, f"index says {index['path']}, ledger sealed it at {sealed.ledger_path}")
        )
    path = layout.root / sealed.ledger_path
    if ".." in Path(sealed.ledger_path).parts:
        return [*problems, Problem(where, f"stored object path {sealed.ledger_path} leaves the store")]
    if sealed.purged and not path.exists():
        return problems + _purged_item_problems(conn, layout, sealed, trusted, where)
    if not path.is_file():
        return [*problems, Problem(where, f"stored object {sealed.ledger_path} is missing")]
    result = verify_sealed_file(path, trusted, layout.sidecar(path))
    problems.extend(Problem(where, f"{p.where}: {p.what}") for p in result.problems)
    manifest = result.manifest
    if manifest is None:
        return problems
    manifest_bytes = canonical_json(manifest)
    if sha256_hex(manifest_bytes) != sealed.manifest_sha256:
        problems.append(Problem(where, "manifest differs from the one the ledger recorded when sealing"))
    if index is not None:
        if index["manifest"] is None or index["manifest"].encode() != manifest_bytes:
            problems.append(Problem(where, "the item index holds a different manifest than the sealed one"))
        if index["sha256"] != manifest.get("sha256") or index["size"] != manifest.get("size"):
            problems.append(Problem(where, "item index hash or size differs from the manifest"))
        problems.extend(_index_column_problems(conn, sealed.item, index, manifest, where))
        if bool(index["sealed_in_file"]) != result.sealed:
            problems.append(
                Problem(
                    where,
                    "item index says the manifest is embedded, the file disagrees"
                    if index["sealed_in_file"]
                    else "the file carries a box the index does not know",
                )
            )
    problems.extend(_acquisition_problems(conn, sealed.item, manifest, where))
    return problems


def _index_column_problems(
    conn: sqlite3.Connection, item: str, index: sqlite3.Row, manifest: dict[str, Any], where: str
) -> list[Problem]:
    """The item index's device, officer and acquisition time are copies of what the signed manifest and
    the `acquired` entry say; status pages and searches read them, so an edited copy is named."""
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    times = manifest.get("time") if isinstance(manifest.get("time"), dict) else {}
    assert isinstance(source, dict) and isinstance(times, dict)
    expected: dict[str, object] = {"acquired": times.get("acquired_utc")}
    if "officer_no" in source:  # sources without an officer (a station directory) leave it to the index
        expected["officer_no"] = source["officer_no"]
    acquired = conn.execute(
        "SELECT data FROM ledger WHERE item=? AND type='acquired' ORDER BY seq DESC LIMIT 1", (item,)
    ).fetchone()
    data = _json_object(acquired["data"]) if acquired is not None else None
    if data is not None and "device_serial" in data:
        expected["device_serial"] = data["device_serial"]
    return [
        Problem(where, f"item index column {column} is {str(index[column])[:80]!r}, but the sealed record "
                       f"says {str(value)[:80]!r}")
        for column, value in expected.items()
        if index[column] != value
    ]


def _json_object(raw: object) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _purged_item_problems(
    conn: sqlite3.Connection,
    layout: StoreLayout,
    sealed: _SealedItem,
    trusted: dict[str, Ed25519PublicKey],
    where: str,
) -> list[Problem]:
    """A purged item keeps its signed manifest sidecar and receipt: the content is at the central."""
    sidecar = layout.sidecar(layout.root / sealed.ledger_path)
    try:
        manifest = parse_json(sidecar.read_bytes())
    except (OSError, CanonicalJsonError, ValueError) as exc:
        return [Problem(where, f"purged after receipt, but its manifest sidecar is unreadable: {exc}")]
    if not isinstance(manifest, dict):
        return [Problem(where, "purged after receipt, but its manifest sidecar is not a JSON object")]
    problems = [Problem(where, f"{p.where}: {p.what}") for p in verify_manifest(manifest, trusted)]
    if sha256_hex(canonical_json(manifest)) != sealed.manifest_sha256:
        problems.append(Problem(where, "manifest differs from the one the ledger recorded when sealing"))
    return problems + _acquisition_problems(conn, sealed.item, manifest, where)


def _receipt_problems(
    conn: sqlite3.Connection,
    layout: StoreLayout,
    sealed: _SealedItem,
    central_key: Ed25519PublicKey | None,
    station: str,
) -> tuple[list[Problem], bool]:
    """The receipt sidecar against the ledger's receipt entry (and in full with the central key)."""
    where = f"item {sealed.item}"
    entry = conn.execute(
        "SELECT seq, data FROM ledger WHERE item=? AND type='receipt' ORDER BY seq DESC LIMIT 1",
        (sealed.item,),
    ).fetchone()
    receipt_file = layout.root / (sealed.ledger_path + ".receipt.json")
    if entry is None:
        if receipt_file.exists():
            return [Problem(where, "a receipt file exists but the ledger records no receipt")], False
        return [], False
    problems: list[Problem] = []
    data = _ledger_data(entry["data"], entry["seq"], problems)
    try:
        receipt = parse_json(receipt_file.read_bytes())
    except (OSError, CanonicalJsonError, ValueError) as exc:
        return [*problems, Problem(where, f"receipt (ledger seq {entry['seq']}) unreadable: {exc}")], True
    if not isinstance(receipt, dict) or data is None:
        return [*problems, Problem(where, "receipt file is not a JSON object")], True
    tree_head = receipt.get("tree_head") if isinstance(receipt.get("tree_head"), dict) else {}
    assert isinstance(tree_head, dict)
    if (receipt.get("leaf_index"), receipt.get("tree_size"), tree_head.get("root_hash")) != (
        data.get("leaf_index"),
        data.get("tree_size"),
        data.get("root_hash"),
    ):
        problems.append(
            Problem(where, f"receipt file differs from the receipt recorded at ledger seq {entry['seq']}")
        )
    kept = conn.execute("SELECT receipt FROM uploads WHERE item=?", (sealed.item,)).fetchone()
    if kept is None or kept["receipt"] is None:
        problems.append(Problem(where, f"the ledger records its receipt at seq {entry['seq']}, but state.db "
                                       "keeps no receipted upload for it (uploads row deleted or edited)"))
    elif kept["receipt"].encode("utf-8") != canonical_json(receipt):
        problems.append(Problem(where, "the receipt state.db keeps (uploads) differs from its receipt file"))
    index = sealed.index
    leaf = receipt.get("leaf") if isinstance(receipt.get("leaf"), dict) else {}
    assert isinstance(leaf, dict)
    # The receipt must be about this very record: item, content, size and the sealed manifest.
    if receipt.get("item") != sealed.item or leaf.get("manifest_sha256") != sealed.manifest_sha256:
        problems.append(
            Problem(where, "the receipt names another item or another manifest than the sealed one")
        )
    if index is not None and (receipt.get("sha256"), leaf.get("size")) != (index["sha256"], index["size"]):
        problems.append(Problem(where, "the receipt's hash or size differs from the item index"))
    if central_key is not None:
        problems.extend(
            Problem(where, f"receipt: {p.where}: {p.what}")
            for p in verify_receipt(
                receipt,
                central_key,
                expected_item=sealed.item,
                expected_sha256=None if index is None else index["sha256"],
                expected_station=station or None,
            )
        )
    return problems, True


def _acquisition_problems(
    conn: sqlite3.Connection, item: str, manifest: dict[str, Any], where: str
) -> list[Problem]:
    acquired = conn.execute(
        "SELECT seq, hash, data FROM ledger WHERE item=? AND type='acquired' ORDER BY seq DESC LIMIT 1",
        (item,),
    ).fetchone()
    if acquired is None:
        return [Problem(where, "no acquired entry in the ledger")]
    problems: list[Problem] = []
    data = _ledger_data(acquired["data"], acquired["seq"], problems)
    if data is None:
        return problems
    if data.get("sha256") != manifest.get("sha256") or data.get("size") != manifest.get("size"):
        problems.append(
            Problem(
                where,
                f"manifest hash/size differ from ledger seq {acquired['seq']} "
                f"(acquired {str(data.get('sha256'))[:64]}, {str(data.get('size'))[:20]} bytes)",
            )
        )
    chain = manifest.get("chain") or {}
    if chain.get("seq") != acquired["seq"] or chain.get("entry_hash") != acquired["hash"]:
        problems.append(
            Problem(
                where,
                f"manifest chain points at seq {chain.get('seq')}, "
                f"the acquisition is ledger seq {acquired['seq']}",
            )
        )
    return problems


def _unaccounted(conn: sqlite3.Connection, layout: StoreLayout, known: set[str]) -> list[Problem]:
    """Objects under items/ that no sealed ledger entry accounts for (planted or left over)."""
    problems: list[Problem] = []
    for path in sorted(layout.items.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(layout.root))
        for suffix in (".manifest.json", ".receipt.json"):
            if rel.endswith(suffix) and rel[: -len(suffix)] in known:
                rel = ""
        if rel and rel not in known:
            problems.append(Problem(f"object {rel}", "not accounted for by any sealed ledger entry"))
    return problems


# What a station store holds besides items/ (edge.ingest.store): anything else was planted or left over.
_ROOT_FILES = frozenset({"state.db", "state.db-wal", "state.db-shm", "state.db-journal", "ledger.reserve",
                         "store.lock", "mqtt-client.secret", "mqtt-telemetry.salt"})
# gb28181-spool: GB/T 28181 downloads in progress (edge.sources.gb28181.scheduler), not evidence until sealed.
# rooms: room sessions and the segments ffmpeg is writing (edge.rooms.state), not evidence until sealed.
# gb28181-clocks: the device clocks' history across restarts (edge.gb28181.clock_history).
_ROOT_DIRS = frozenset({"items", "keys", "tmp", "gb28181-spool", "gb28181-clocks", "rooms"})
# keys/station.key and its .pub; keys rotated out stay as station.key.<key id>.retired[.pub].
_KEY_FILE = re.compile(r"station\.key(\.pub|\.[0-9a-f]{32}\.retired(\.pub)?)?")
_TMP_FILE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.part")
# A copy in progress, or one a failed attempt may leave until the next attempt discards it; sources add
# states of their own after sealing, when no copy is left in tmp/.
_COPY_STATES = AcquisitionState.IN_PROGRESS | {AcquisitionState.FAILED}


def _unexpected_files(conn: sqlite3.Connection, layout: StoreLayout, notes: list[str]) -> list[Problem]:
    """Files in the store root, keys/ and tmp/ that a station does not write: a copy in progress is
    tmp/<item>.part of an acquisition not yet sealed, or of a re-acquisition the ledger shows open (the
    station was stopped in it: a note in `notes`, not a problem); nothing else is expected there."""
    problems: list[Problem] = []

    def unexpected(path: Path, why: str) -> None:
        problems.append(Problem(f"file {path.relative_to(layout.root)}", why))

    for path in sorted(layout.root.iterdir()):
        if path.name in _ROOT_DIRS and path.is_dir() and not path.is_symlink():
            continue
        if path.name in _ROOT_FILES and path.is_file() and not path.is_symlink():
            continue
        unexpected(path, "not part of a station store (planted, or left by something else)")
    if layout.keys_dir.is_dir():
        for path in sorted(layout.keys_dir.rglob("*")):
            if not (_KEY_FILE.fullmatch(path.name) and path.parent == layout.keys_dir and path.is_file()):
                unexpected(path, "not a station key file (planted, or left by an interrupted key write)")
    if layout.tmp.is_dir():
        for path in sorted(layout.tmp.rglob("*")):
            match = _TMP_FILE.fullmatch(path.name)
            state: str | None = None
            if match is not None and path.parent == layout.tmp and path.is_file():
                row = conn.execute("SELECT state FROM acquisitions WHERE item=?", (match[1],)).fetchone()
                state = None if row is None else row[0]
            if state in _COPY_STATES:
                continue
            if match is not None and path.parent == layout.tmp and path.is_file() and not path.is_symlink():
                name = str(path.relative_to(layout.root))
                opened = open_rebuild(conn, match[1], name)
                if opened is not None:
                    notes.append(f"file {name}: the temp copy of a re-acquisition of item {match[1]} that "
                                 f"the station was stopped in (opened at ledger seq {opened}); the "
                                 "station discards it at its next start")
                    continue
            unexpected(path, "not a copy in progress: no acquisition or re-acquisition of the store is "
                             "under way for it (planted, or left over)")
    return problems
