"""What an attacker with write access to every file of a store does with it: edit bytes, edit SQLite
rows after dropping the append-only triggers, delete files, recompute a hash chain, and sign with the
station key (it lies on the same disk) or with a key of their own."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edge.custody.canonical import canonical_json, parse_json
from edge.custody.keys import StationKey
from edge.custody.ledger import GENESIS_PREV, checkpoint_payload, entry_hash, station_time_now
from edge.custody.receipt import sign_tree_head


@contextmanager
def attacker_db(db: Path) -> Iterator[sqlite3.Connection]:
    """The database as someone with the file sees it: the append-only triggers are dropped first."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        yield conn
    finally:
        conn.close()


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 3 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def edit_json(path: Path, change: Callable[[dict[str, Any]], None], *, canonical: bool = True) -> None:
    """Edit a JSON file in place, written back the way the store writes it (canonical, newline)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_bytes(canonical_json(doc) + b"\n" if canonical else json.dumps(doc).encode())


def other_b64_signature(signature: str) -> str:
    """A well-formed signature that is not the signed one (one bit of the first byte flipped)."""
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def other_hex(value: str) -> str:
    return ("1" if value[0] == "0" else "0") + value[1:]


def write_key_files(keys_dir: Path, key: StationKey, name: str) -> None:
    """Put ``key`` in place of ``keys_dir/name`` (private, PKCS#8 PEM) and ``name.pub``."""
    pem = key._private.private_bytes(  # an attacker writes their own key file however they like
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (keys_dir / name).write_bytes(pem)
    (keys_dir / f"{name}.pub").write_bytes(key.public_pem())


def rewrite_chain(
    conn: sqlite3.Connection,
    *,
    from_seq: int,
    edit: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda entry: entry,
    table: str = "ledger",
    station: str | None = None,
) -> None:
    """Rewrite a ledger from ``from_seq`` on so that its hash chain links again: ``edit`` gets each
    entry body (seq, time, type, item, data, prev) and returns it changed, or None to drop it; later
    entries are renumbered and every hash recomputed. ``station`` selects a station's ledger in the
    central's ``station_ledger``."""
    where, args = ("station = ? AND ", (station,)) if station is not None else ("", ())
    rows = conn.execute(
        f"SELECT seq, time, type, item, data, prev FROM {table} WHERE {where}seq >= ? ORDER BY seq",
        (*args, from_seq),
    ).fetchall()
    conn.execute(f"DELETE FROM {table} WHERE {where}seq >= ?", (*args, from_seq))
    seq, prev = from_seq, rows[0][5]
    extra_columns = "" if station is None else ", station, accepted_utc"
    for old_seq, time, type_, item, data, _ in rows:
        body = edit({"seq": old_seq, "time": time, "type": type_, "item": item, "data": parse_json(data),
                     "prev": prev})
        if body is None:
            continue
        body = {**body, "seq": seq, "prev": prev}
        hash_hex = entry_hash(body)
        values: tuple[Any, ...] = (seq, body["time"], body["type"], body["item"],
                                   canonical_json(body["data"]).decode("utf-8"), prev, hash_hex)
        if station is not None:
            values += (station, station_time_now())
        marks = ", ".join("?" * len(values))
        conn.execute(f"INSERT INTO {table} (seq, time, type, item, data, prev, hash{extra_columns}) "
                     f"VALUES ({marks})", values)
        seq, prev = seq + 1, hash_hex


def resign_checkpoints(conn: sqlite3.Connection, key: StationKey, *, from_seq: int = 1) -> None:
    """Re-sign every station checkpoint from ``from_seq`` over what the ledger now holds at its seq (a
    checkpoint beyond the ledger's end is dropped, as an attacker would)."""
    rows = conn.execute("SELECT id, station, seq, time FROM ledger_checkpoints WHERE seq >= ?", (from_seq,))
    for row_id, station, seq, time in rows.fetchall():
        found = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (seq,)).fetchone()
        if found is None:
            conn.execute("DELETE FROM ledger_checkpoints WHERE id = ?", (row_id,))
            continue
        signature = base64.b64encode(key.sign(checkpoint_payload(station, seq, found[0], time))).decode()
        conn.execute("UPDATE ledger_checkpoints SET hash = ?, key_id = ?, signature = ? WHERE id = ?",
                     (found[0], key.key_id, signature, row_id))


def append_forged_entry(conn: sqlite3.Connection, type_: str, item: str | None, data: dict[str, Any]) -> int:
    """An entry written past ``Ledger.append``, as the holder of the station key can: linked to the
    ledger's head in the station chain, its ``data`` (with whatever ``item_prev``) taken as given, no
    checkpoint (sign one with ``Ledger.checkpoint`` or :func:`forge_checkpoint`). Returns its seq."""
    head = conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = head if head is not None else (0, GENESIS_PREV)
    body = {"seq": seq + 1, "time": station_time_now(), "type": type_, "item": item, "data": data,
            "prev": prev}
    with conn:
        conn.execute("INSERT INTO ledger (seq, time, type, item, data, prev, hash) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (seq + 1, body["time"], type_, item, canonical_json(data).decode(), prev,
                      entry_hash(body)))
    return int(seq + 1)


def forge_checkpoint(conn: sqlite3.Connection, key: StationKey, station: str, seq: int) -> None:
    """A new checkpoint over the ledger's entry at ``seq``, signed with ``key``."""
    hash_hex = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (seq,)).fetchone()[0]
    time = station_time_now()
    signature = base64.b64encode(key.sign(checkpoint_payload(station, seq, hash_hex, time))).decode()
    conn.execute("INSERT INTO ledger_checkpoints (station, seq, hash, time, key_id, signature) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (station, seq, hash_hex, time, key.key_id, signature))


def resign_tree_heads(conn: sqlite3.Connection, key: StationKey) -> None:
    """Every signed tree head of the central's log, signed again with ``key``."""
    for row_id, origin, size, root_hash, time in conn.execute(
        "SELECT id, origin, tree_size, root_hash, time FROM merkle_tree_heads"
    ).fetchall():
        head = sign_tree_head(origin, size, bytes.fromhex(root_hash), time, key)
        conn.execute("UPDATE merkle_tree_heads SET key_id = ?, signature = ? WHERE id = ?",
                     (head.key_id, head.signature, row_id))
