"""`edge verify`: check a sealed file, one item, or a whole station store, naming every problem.

A store verifies when: the ledger chain and its signed checkpoints hold; every sealed item's stored
object hashes to its manifest, its manifest is signed by the station key, agrees with the ledger's
`acquired` and `sealed` entries and with the item index; and nothing in items/ is unaccounted for.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import key_id_of, load_public_key
from edge.custody.ledger import verify_ledger
from edge.custody.problems import Problem
from edge.custody.seal import verify_sealed_file
from edge.store import StoreLayout


@dataclass
class VerifyReport:
    target: str
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "checked": self.checked,
            "problems": [{"where": p.where, "what": p.what} for p in self.problems],
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
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _station_id(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT value FROM station WHERE key='id'").fetchone()
    return str(row["value"]) if row else ""


def verify_file(path: Path, trusted_key: Ed25519PublicKey | None = None) -> VerifyReport:
    report = VerifyReport(str(path))
    if trusted_key is None:
        store = find_store_of(path)
        if store is not None:
            trusted_key = load_public_key(StoreLayout(store).public_key)
    trusted = None if trusted_key is None else {key_id_of(trusted_key): trusted_key}
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


def verify_store(root: Path, only_item: str | None = None) -> VerifyReport:
    layout = StoreLayout(root)
    report = VerifyReport(str(root) if only_item is None else f"item {only_item}")
    try:
        public_key = load_public_key(layout.public_key)
    except Exception as exc:
        report.problems.append(
            Problem(f"key {layout.public_key}", f"cannot load the station public key: {exc}")
        )
        return report
    conn = _open_readonly(layout.db)
    try:
        station = _station_id(conn)
        if only_item is None:
            report.problems.extend(verify_ledger(conn, public_key, station))
            report.checked["ledger_entries"] = int(conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
        items = list(_sealed_items(conn, only_item))
        if only_item is not None and not items:
            report.problems.append(Problem(f"item {only_item}", "no such sealed item in the store"))
        trusted = {key_id_of(public_key): public_key}
        known_paths: set[str] = set()
        for item in items:
            report.problems.extend(_verify_item(conn, layout, item, trusted))
            known_paths.add(item["path"])
        report.checked["items"] = len(items)
        if only_item is None:
            report.problems.extend(_unaccounted(conn, layout, known_paths))
    finally:
        conn.close()
    return report


def _sealed_items(conn: sqlite3.Connection, only: str | None) -> Iterator[sqlite3.Row]:
    """Items the ledger says were sealed, joined to the index (a deleted index row is a problem)."""
    query = (
        "SELECT l.item AS item, json_extract(l.data, '$.path') AS ledger_path, "
        "json_extract(l.data, '$.manifest_sha256') AS manifest_sha256, i.path AS path, "
        "i.sha256 AS sha256, i.size AS size, i.manifest AS manifest "
        "FROM ledger l LEFT JOIN items i ON i.item = l.item WHERE l.type = 'sealed'"
    )
    args: tuple[str, ...] = ()
    if only is not None:
        query += " AND l.item = ?"
        args = (only,)
    yield from conn.execute(query + " ORDER BY l.seq", args)


def _verify_item(
    conn: sqlite3.Connection, layout: StoreLayout, row: sqlite3.Row, trusted: dict[str, Ed25519PublicKey]
) -> list[Problem]:
    where = f"item {row['item']}"
    if row["path"] is None:
        return [Problem(where, "sealed in the ledger but missing from the item index")]
    problems: list[Problem] = []
    if row["path"] != row["ledger_path"]:
        problems.append(Problem(where, f"index says {row['path']}, ledger sealed it at {row['ledger_path']}"))
    path = layout.root / row["ledger_path"]
    if not path.is_file():
        return [*problems, Problem(where, f"stored object {row['ledger_path']} is missing")]
    result = verify_sealed_file(path, trusted, layout.sidecar(path))
    problems.extend(Problem(where, f"{p.where}: {p.what}") for p in result.problems)
    manifest = result.manifest
    if manifest is None:
        return problems
    if sha256_hex(canonical_json(manifest)) != row["manifest_sha256"]:
        problems.append(Problem(where, "manifest differs from the one the ledger recorded when sealing"))
    acquired = conn.execute(
        "SELECT seq, hash, data FROM ledger WHERE item=? AND type='acquired' ORDER BY seq DESC LIMIT 1",
        (row["item"],),
    ).fetchone()
    if acquired is None:
        problems.append(Problem(where, "no acquired entry in the ledger"))
    else:
        data = json.loads(acquired["data"])
        if data.get("sha256") != manifest.get("sha256") or data.get("size") != manifest.get("size"):
            problems.append(
                Problem(
                    where,
                    f"manifest hash/size differ from ledger seq {acquired['seq']} "
                    f"(acquired {data.get('sha256')}, {data.get('size')} bytes)",
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
    if row["sha256"] != manifest.get("sha256"):
        problems.append(Problem(where, "item index hash differs from the manifest"))
    return problems


def _unaccounted(conn: sqlite3.Connection, layout: StoreLayout, known: set[str]) -> list[Problem]:
    """Objects under items/ that no sealed ledger entry accounts for (planted or left over)."""
    problems: list[Problem] = []
    for path in sorted(layout.items.rglob("*")):
        if not path.is_file() or path.name.endswith(".manifest.json"):
            continue
        rel = str(path.relative_to(layout.root))
        if rel not in known:
            problems.append(Problem(f"object {rel}", "not accounted for by any sealed ledger entry"))
    return problems
