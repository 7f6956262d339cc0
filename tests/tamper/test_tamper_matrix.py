"""The tamper matrix (issue 7): `edge verify PATH`, with no flag beyond the path, on a station store and
a central store after each attack an attacker with write access to every file of that store can make.
Each must fail and name what was touched; the untouched copies verify.

The stores come from the real `edge demo` (two recorders, two files each: two MP4s sealed in-file, two
JPEGs sealed by sidecar; every item uploaded, receipted with a witnessed head, and erased), built once
per module. Each case attacks its own copy. The station's configuration (outside the store, as
installed) names the central, which serves the untouched central store: invariant 3, so an attacker who
rewrites every station file and re-signs with the station key is still named through what the central
witnessed. Each attack returns the names the report must contain (item id, ledger seq, object hash,
path relative to the store, the key).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.custody.keys import StationKey
from tests.tamper.attacker import (
    attacker_db,
    edit_json,
    flip_byte,
    forge_checkpoint,
    other_b64_signature,
    other_hex,
    resign_checkpoints,
    resign_tree_heads,
    rewrite_chain,
    truncate_half,
    write_key_files,
)
from tests.tamper.stores import (
    STATION,
    Pristine,
    Verdict,
    build_demo,
    copy_tree,
    read_items,
    serving_central,
    verify_central,
    verify_station,
    write_station_config,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    workdir = tmp_path_factory.mktemp("tamper")
    demo = workdir / "demo"
    build_demo(demo)
    # The central keeps serving a store of its own; the cases copy the untouched one next to it.
    live = copy_tree(demo / "central-store", workdir / "central-live")
    items, head = read_items(demo / "station-store")
    with serving_central(live, workdir) as url:
        yield Pristine(workdir, demo / "station-store", demo / "central-store", demo / "station-identity",
                       url, items, head)


@dataclass(frozen=True)
class Target:
    """One case's copy of a store, and the untouched facts about it."""

    root: Path
    pristine: Pristine

    def path(self, relative: str) -> Path:
        return self.root / relative


Attack = Callable[[Target], list[str]]


# -- the station store ---------------------------------------------------------------------------------


def _sidecar(relative: str) -> str:
    return relative + ".manifest.json"


def _receipt(relative: str) -> str:
    return relative + ".receipt.json"


def flip_byte_in_sealed_mp4(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    flip_byte(t.path(item.path))
    return [f"item {item.item}"]


def truncate_item(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    truncate_half(t.path(item.path))
    return [f"item {item.item}"]


def delete_item_file(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=False)
    t.path(item.path).unlink()
    return [f"item {item.item}"]


def edit_sidecar(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=False)
    edit_json(t.path(_sidecar(item.path)), lambda m: m["case"].update(location="别处"))
    return [f"item {item.item}"]


def edit_sidecar_of_sealed_mp4(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    edit_json(t.path(_sidecar(item.path)), lambda m: m["case"].update(case_number="A0000"))
    return [f"item {item.item}"]


def delete_sidecar(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=False)
    t.path(_sidecar(item.path)).unlink()
    return [f"item {item.item}"]


def delete_sidecar_of_sealed_mp4(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    t.path(_sidecar(item.path)).unlink()
    return [f"item {item.item}"]


def edit_receipt_signature(t: Target) -> list[str]:
    item = t.pristine.newest
    edit_json(t.path(_receipt(item.path)),
              lambda r: r["tree_head"].update(signature=other_b64_signature(r["tree_head"]["signature"])))
    return [f"item {item.item}"]


def _receipt_with_longest_proof(t: Target) -> tuple[str, Path]:
    paths = [(i.item, t.path(_receipt(i.path))) for i in t.pristine.items]
    return max(paths, key=lambda p: len(json.loads(p[1].read_text())["inclusion_proof"]))


def edit_receipt_inclusion_proof(t: Target) -> list[str]:
    item, path = _receipt_with_longest_proof(t)

    def change(receipt: dict[str, Any]) -> None:
        assert receipt["inclusion_proof"], "the fixture needs a receipt with a non-empty proof"
        receipt["inclusion_proof"][0] = other_hex(receipt["inclusion_proof"][0])

    edit_json(path, change)
    return [f"item {item}"]


def edit_receipt_leaf_index(t: Target) -> list[str]:
    item, path = _receipt_with_longest_proof(t)
    edit_json(path, lambda r: r.update(leaf_index=r["leaf_index"] - 1))
    return [f"item {item}"]


def edit_receipt_leaf(t: Target) -> list[str]:
    item, path = _receipt_with_longest_proof(t)
    edit_json(path, lambda r: r["leaf"].update(accepted_utc="2020-01-01T00:00:00.000000Z"))
    return [f"item {item}"]


def edit_receipt_kept_in_state_db(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("state.db")) as db:
        db.execute("UPDATE uploads SET receipt = replace(receipt, '\"leaf_index\":', '\"leaf_index\":1') "
                   "WHERE item = ?", (item.item,))
    return [f"item {item.item}"]


def delete_receipt(t: Target) -> list[str]:
    item = t.pristine.newest
    t.path(_receipt(item.path)).unlink()
    return [f"item {item.item}"]


def _last_seq_of(t: Target, entry_type: str) -> int:
    with attacker_db(t.path("state.db")) as db:
        return int(db.execute("SELECT max(seq) FROM ledger WHERE type = ?", (entry_type,)).fetchone()[0])


def delete_ledger_tail_with_checkpoints(t: Target) -> list[str]:
    """The erasures after the last receipt go, with their checkpoints (the witnessed heads kept)."""
    cut, head = _last_seq_of(t, "receipt"), t.pristine.ledger_head
    with attacker_db(t.path("state.db")) as db:
        db.execute("DELETE FROM ledger WHERE seq > ?", (cut,))
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > ?", (cut,))
    return [f"entries {cut + 1}-{head} were deleted"]


def delete_ledger_tail_leaving_checkpoints(t: Target) -> list[str]:
    cut, head = _last_seq_of(t, "receipt"), t.pristine.ledger_head
    with attacker_db(t.path("state.db")) as db:
        db.execute("DELETE FROM ledger WHERE seq > ?", (cut,))
    return [f"checkpoint seq {head}"]


def reorder_ledger_entries(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    first = item.acquired_seq
    with attacker_db(t.path("state.db")) as db:
        columns = ("time", "type", "item", "data", "prev", "hash")
        a = db.execute(f"SELECT {', '.join(columns)} FROM ledger WHERE seq = ?", (first,)).fetchone()
        b = db.execute(f"SELECT {', '.join(columns)} FROM ledger WHERE seq = ?", (first + 1,)).fetchone()
        setter = ", ".join(f"{c} = ?" for c in columns)
        db.execute(f"UPDATE ledger SET {setter} WHERE seq = ?", (*b, first))
        db.execute(f"UPDATE ledger SET {setter} WHERE seq = ?", (*a, first + 1))
    return [f"ledger seq {first}"]


def edit_ledger_entry_data(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    with attacker_db(t.path("state.db")) as db:
        db.execute("UPDATE ledger SET data = replace(data, '\"size\":', '\"size\":1') WHERE seq = ?",
                   (item.acquired_seq,))
    return [f"ledger seq {item.acquired_seq}"]


def edit_checkpoint_signature(t: Target) -> list[str]:
    with attacker_db(t.path("state.db")) as db:
        row_id, seq, signature = db.execute(
            "SELECT id, seq, signature FROM ledger_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        db.execute("UPDATE ledger_checkpoints SET signature = ? WHERE id = ?",
                   (other_b64_signature(signature), row_id))
    return [f"checkpoint seq {seq}"]


def edit_kept_witnessed_head(t: Target) -> list[str]:
    """A head the central signed, as the station keeps it, made to say another seq."""
    with attacker_db(t.path("state.db")) as db:
        row_id, head = db.execute("SELECT id, head FROM witnessed_heads ORDER BY id LIMIT 1").fetchone()
        doc = json.loads(head)
        doc["seq"] -= 1
        db.execute("UPDATE witnessed_heads SET seq = ?, head = ? WHERE id = ?",
                   (doc["seq"], json.dumps(doc, sort_keys=True, separators=(",", ":")), row_id))
    return [f"witnessed head {row_id} "]


def delete_kept_witnessed_head(t: Target) -> list[str]:
    with attacker_db(t.path("state.db")) as db:
        row_id = int(db.execute("SELECT id FROM witnessed_heads ORDER BY id LIMIT 1 OFFSET 2").fetchone()[0])
        db.execute("DELETE FROM witnessed_heads WHERE id = ?", (row_id,))
    return [f"witnessed head {row_id}"]


def replace_station_key_and_resign_ledger(t: Target) -> list[str]:
    impostor = StationKey.generate()
    write_key_files(t.path("keys"), impostor, "station.key")
    with attacker_db(t.path("state.db")) as db:
        resign_checkpoints(db, impostor)
    return ["station key", impostor.key_id]


def _plant(path: Path, data: bytes = b"planted") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.name


def plant_in_items(t: Target) -> list[str]:
    day = Path(t.pristine.newest.path).parent
    name = f"{uuid.uuid4()}.mp4"
    _plant(t.path(str(day / name)))
    return [str(day / name)]


def plant_in_tmp(t: Target) -> list[str]:
    name = f"tmp/{uuid.uuid4()}.part"
    _plant(t.path(name))
    return [name]


def plant_in_root(t: Target) -> list[str]:
    _plant(t.path("evidence-index.db"))
    return ["evidence-index.db"]


def plant_in_keys(t: Target) -> list[str]:
    _plant(t.path("keys/authorized.pub"), StationKey.generate().public_pem())
    return ["keys/authorized.pub"]


def edit_items_row_officer(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("state.db")) as db:
        db.execute("UPDATE items SET officer_no = '999999' WHERE item = ?", (item.item,))
    return [f"item {item.item}"]


def edit_items_row_hash(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("state.db")) as db:
        db.execute("UPDATE items SET sha256 = ? WHERE item = ?", (other_hex(item.sha256), item.item))
    return [f"item {item.item}"]


def delete_items_row(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("state.db")) as db:
        db.execute("DELETE FROM uploads WHERE item = ?", (item.item,))
        db.execute("DELETE FROM items WHERE item = ?", (item.item,))
    return [f"item {item.item}"]


def rewrite_ledger_tail_and_resign(t: Target) -> list[str]:
    """The strongest attack on the station alone: from the first erasure on, every `wiped` entry says
    nothing was erased; the chain is recomputed, every checkpoint re-signed with the station's own key,
    and every witnessed head the store kept for the rewritten part removed. Only the central knows."""
    with attacker_db(t.path("state.db")) as db:
        first_wipe = int(db.execute("SELECT min(seq) FROM ledger WHERE type = 'wiped'").fetchone()[0])

        def hide_erasure(entry: dict[str, Any]) -> dict[str, Any]:
            if entry["type"] == "wiped":
                entry["type"] = "session_note"
                entry["data"] = {"note": "recorder kept its files"}
            return entry

        rewrite_chain(db, from_seq=first_wipe, edit=hide_erasure)
        resign_checkpoints(db, StationKey.load_or_create(t.path("keys/station.key")), from_seq=first_wipe)
        db.execute("DELETE FROM witnessed_heads WHERE seq >= ?", (first_wipe,))
    _strip_receipt_heads(t, from_seq=first_wipe)
    return [f"witnessed head seq {t.pristine.ledger_head}", "(the central)", "the ledger was rewritten"]


def _strip_receipt_heads(t: Target, *, from_seq: int) -> None:
    """Receipts whose witnessed head covers the rewritten part lose it (a receipt/1 has none)."""
    for item in t.pristine.items:
        path = t.path(_receipt(item.path))
        if path.exists() and json.loads(path.read_text())["witnessed_head"]["seq"] >= from_seq:
            def downgrade(receipt: dict[str, Any]) -> None:
                del receipt["witnessed_head"]
                receipt["format"] = "evidence-edge/receipt/1"

            edit_json(path, downgrade)


def truncate_ledger_and_forge_checkpoint(t: Target) -> list[str]:
    """The erasures after the last receipt go with their checkpoints and the witnessed heads kept for
    them; a checkpoint at the new end is forged with the real station key. Only the central knows."""
    cut, head = _last_seq_of(t, "receipt"), t.pristine.ledger_head
    with attacker_db(t.path("state.db")) as db:
        db.execute("DELETE FROM ledger WHERE seq > ?", (cut,))
        db.execute("DELETE FROM ledger_checkpoints WHERE seq > ?", (cut,))
        db.execute("DELETE FROM witnessed_heads WHERE seq > ?", (cut,))
        forge_checkpoint(db, StationKey.load_or_create(t.path("keys/station.key")), STATION, cut)
    _strip_receipt_heads(t, from_seq=cut + 1)
    return [f"witnessed head seq {head}", f"entries {cut + 1}-{head} were deleted", "(the central)"]


def delete_newest_item_with_its_entries(t: Target) -> list[str]:
    """The newest item goes from the station: files, rows and every ledger entry about it; the chain
    is recomputed and re-signed with the station key, the witnessed heads kept for it removed."""
    item = t.pristine.newest
    for relative in (item.path, _sidecar(item.path), _receipt(item.path)):
        t.path(relative).unlink()
    with attacker_db(t.path("state.db")) as db:
        for table in ("uploads", "acquisitions", "items"):
            db.execute(f"DELETE FROM {table} WHERE item = ?", (item.item,))
        rewrite_chain(db, from_seq=item.acquired_seq,
                      edit=lambda entry: None if entry["item"] == item.item else entry)
        resign_checkpoints(db, StationKey.load_or_create(t.path("keys/station.key")),
                           from_seq=item.acquired_seq)
        db.execute("DELETE FROM witnessed_heads WHERE seq >= ?", (item.acquired_seq,))
    _strip_receipt_heads(t, from_seq=item.acquired_seq)
    # The central's copy of the ledger names the item itself, not only that the ledger changed.
    return [f"witnessed head seq {t.pristine.ledger_head}", "(the central)", f"item {item.item}"]


STATION_ATTACKS: list[Attack] = [
    flip_byte_in_sealed_mp4,
    truncate_item,
    delete_item_file,
    edit_sidecar,
    edit_sidecar_of_sealed_mp4,
    delete_sidecar,
    delete_sidecar_of_sealed_mp4,
    edit_receipt_signature,
    edit_receipt_inclusion_proof,
    edit_receipt_leaf_index,
    edit_receipt_leaf,
    edit_receipt_kept_in_state_db,
    delete_receipt,
    delete_ledger_tail_with_checkpoints,
    delete_ledger_tail_leaving_checkpoints,
    reorder_ledger_entries,
    edit_ledger_entry_data,
    edit_checkpoint_signature,
    edit_kept_witnessed_head,
    delete_kept_witnessed_head,
    replace_station_key_and_resign_ledger,
    plant_in_items,
    plant_in_tmp,
    plant_in_root,
    plant_in_keys,
    edit_items_row_officer,
    edit_items_row_hash,
    delete_items_row,
    rewrite_ledger_tail_and_resign,
    truncate_ledger_and_forge_checkpoint,
    delete_newest_item_with_its_entries,
]


def _station_copy(pristine: Pristine, tmp_path: Path) -> tuple[Target, Path]:
    store = copy_tree(pristine.station_store, tmp_path / "station-store")
    return Target(store, pristine), write_station_config(tmp_path / "station.toml", store, pristine)


def assert_named(verdict: Verdict, touched: list[str]) -> None:
    assert "Traceback" not in verdict.stderr, str(verdict)
    assert verdict.code == 1 and verdict.stdout.rstrip().splitlines()[-1].startswith("FAILED:"), str(verdict)
    missing = [name for name in touched if not verdict.names(name)]
    assert not missing, f"verify does not name {missing}:\n{verdict}"


def test_untouched_station_copy_verifies(pristine: Pristine, tmp_path: Path) -> None:
    target, config = _station_copy(pristine, tmp_path)
    verdict = verify_station(target.root, config)
    assert verdict.code == 0 and not verdict.failures, str(verdict)
    assert "central consulted" in verdict.stdout, "the station's configuration was found without a flag"


def test_a_copy_in_progress_is_not_a_planted_file(pristine: Pristine, tmp_path: Path) -> None:
    """Control for plant_in_tmp: tmp/<item>.part of an acquisition under way is what a running (or
    crashed) station leaves there, and verifies."""
    target, config = _station_copy(pristine, tmp_path)
    item = str(uuid.uuid4())
    with attacker_db(target.path("state.db")) as db:
        db.execute("INSERT INTO acquisitions (source, device, original, version, item, state) "
                   "VALUES ('usb', '3300001', 'DCIM/100MEDIA/NEXT.MP4', '1:1', ?, 'copied')", (item,))
    _plant(target.path(f"tmp/{item}.part"))
    verdict = verify_station(target.root, config)
    assert verdict.code == 0, str(verdict)


def test_the_stations_mqtt_secrets_are_not_planted_files(pristine: Pristine, tmp_path: Path) -> None:
    """The MQTT client secret and the telemetry salt the agent keeps in the store root (edge.mqtt.
    station_settings) verify; control: a file planted beside them under a similar name is named."""
    from edge.config.station import load_config
    from edge.mqtt.station_settings import station_client_id, telemetry_device_salt

    target, config = _station_copy(pristine, tmp_path)
    loaded = load_config(config)
    assert loaded.station.store_dir.resolve() == target.root.resolve()
    station_client_id(loaded)
    telemetry_device_salt(loaded)
    assert {"mqtt-client.secret", "mqtt-telemetry.salt"} <= {p.name for p in target.root.iterdir()}
    verdict = verify_station(target.root, config)
    assert verdict.code == 0 and not verdict.failures, str(verdict)
    touched = [_plant(target.path("mqtt-telemetry.salt.old"))]
    assert_named(verify_station(target.root, config), touched)


@pytest.mark.parametrize("attack", STATION_ATTACKS, ids=lambda a: a.__name__)
def test_station_store(attack: Attack, pristine: Pristine, tmp_path: Path) -> None:
    target, config = _station_copy(pristine, tmp_path)
    touched = attack(target)
    assert_named(verify_station(target.root, config), touched)


# -- the central store ---------------------------------------------------------------------------------


def _object(sha256: str) -> str:
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def flip_byte_in_object(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    flip_byte(t.path(_object(item.sha256)))
    return [f"object {item.sha256}"]


def truncate_object(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=False)
    truncate_half(t.path(_object(item.sha256)))
    return [f"object {item.sha256}"]


def delete_object(t: Target) -> list[str]:
    item = t.pristine.newest
    t.path(_object(item.sha256)).unlink()
    return [f"object {item.sha256}"]


def edit_index_item_hash(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=True)
    with attacker_db(t.path("index.db")) as db:
        db.execute("UPDATE items SET sha256 = ? WHERE item = ?", (other_hex(item.sha256), item.item))
    return [f"item {item.item}"]


def edit_index_item_station(t: Target) -> list[str]:
    item = t.pristine.item(sealed_in_file=False)
    with attacker_db(t.path("index.db")) as db:
        db.execute("UPDATE items SET station = 'OTHER-STATION' WHERE item = ?", (item.item,))
    return [f"item {item.item}"]


def edit_index_item_case(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("index.db")) as db:
        db.execute("UPDATE item_case SET case_number = 'A3301000000002024000001' WHERE item = ?",
                   (item.item,))
    return [f"item {item.item}"]


def edit_metadata_history(t: Target) -> list[str]:
    item = t.pristine.newest
    with attacker_db(t.path("index.db")) as db:
        db.execute("UPDATE metadata_history SET changes = replace(changes, '现场检查', '其他') "
                   "WHERE item = ?", (item.item,))
    return [f"item {item.item}"]


def plant_in_objects(t: Target) -> list[str]:
    fake = "ab" * 32
    _plant(t.path(_object(fake)))
    _plant(t.path("objects/README"))
    return [f"object {fake}", "README"]


def plant_in_uploads(t: Target) -> list[str]:
    _plant(t.path("uploads/payload.bin"))
    return ["uploads/payload.bin"]


def plant_in_mqtt_transfers(t: Target) -> list[str]:
    _plant(t.path("mqtt-transfers/payload.bin"))
    return ["mqtt-transfers/payload.bin"]


def plant_in_central_root(t: Target) -> list[str]:
    _plant(t.path("index.db.bak"))
    return ["index.db.bak"]


def plant_in_identity(t: Target) -> list[str]:
    _plant(t.path("identity/extra-ca.crt"))
    return ["identity/extra-ca.crt"]


def delete_station_checkpoint_at_central(t: Target) -> list[str]:
    with attacker_db(t.path("index.db")) as db:
        row_id = db.execute("SELECT id FROM station_checkpoints WHERE station = ? ORDER BY id LIMIT 1 "
                            "OFFSET 2", (STATION,)).fetchone()[0]
        db.execute("DELETE FROM station_checkpoints WHERE id = ?", (row_id,))
    return ["station_checkpoints", f"row {row_id} missing"]


def delete_signed_tree_head(t: Target) -> list[str]:
    """A head in the middle of the log's signed heads, one no receipt names."""
    with attacker_db(t.path("index.db")) as db:
        row_id = db.execute("SELECT id FROM merkle_tree_heads ORDER BY id LIMIT 1").fetchone()[0]
        db.execute("DELETE FROM merkle_tree_heads WHERE id = ?", (row_id,))
    return [f"tree head {row_id}"]


def edit_merkle_node(t: Target) -> list[str]:
    """A node of the log's stored tree: every receipt whose audit path runs through it is named too."""
    with attacker_db(t.path("index.db")) as db:
        level, idx = db.execute("SELECT level, idx FROM merkle_nodes ORDER BY level, idx LIMIT 1").fetchone()
        db.execute("UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = ? AND idx = ?", (level, idx))
    return [f"merkle node level {level} index {idx}"]


def edit_merkle_leaf(t: Target) -> list[str]:
    item = t.pristine.items[1]
    with attacker_db(t.path("index.db")) as db:
        leaf = int(db.execute("SELECT leaf_index FROM items WHERE item = ?", (item.item,)).fetchone()[0])
        db.execute("UPDATE merkle_leaves SET entry = replace(entry, ?, ?) WHERE idx = ?",
                   (item.sha256, other_hex(item.sha256), leaf))
    return [f"merkle leaf {leaf}", f"item {item.item}"]


def edit_signed_tree_head(t: Target) -> list[str]:
    with attacker_db(t.path("index.db")) as db:
        row_id, root_hash = db.execute(
            "SELECT id, root_hash FROM merkle_tree_heads ORDER BY id DESC LIMIT 1").fetchone()
        db.execute("UPDATE merkle_tree_heads SET root_hash = ? WHERE id = ?", (other_hex(root_hash), row_id))
    return [f"tree head {row_id} "]


def delete_newest_item_with_its_leaf_nodes_and_heads(t: Target) -> list[str]:
    """Everything the central holds about its newest item goes: row, case, history, leaf, the nodes over
    it, every head covering it, the content. The rest is consistent; the station's ledger names it."""
    with attacker_db(t.path("index.db")) as db:
        item, sha256, leaf = db.execute(
            "SELECT item, sha256, leaf_index FROM items ORDER BY leaf_index DESC LIMIT 1").fetchone()
        assert leaf == int(db.execute("SELECT max(idx) FROM merkle_leaves").fetchone()[0])
        for table in ("metadata_history", "item_case", "items"):
            db.execute(f"DELETE FROM {table} WHERE item = ?", (item,))
        db.execute("DELETE FROM merkle_leaves WHERE idx = ?", (leaf,))
        db.execute("DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > ?", (leaf,))
        db.execute("DELETE FROM merkle_tree_heads WHERE tree_size > ?", (leaf,))
    t.path(_object(sha256)).unlink()
    return [f"item {item}"]


def rewrite_station_ledger_at_central(t: Target) -> list[str]:
    """The central has no station key: a rewritten chain no longer matches the station's checkpoints."""
    item = t.pristine.item(sealed_in_file=True)
    with attacker_db(t.path("index.db")) as db:
        def edit(entry: dict[str, Any]) -> dict[str, Any]:
            if entry["seq"] == item.acquired_seq:
                entry["data"] = {**entry["data"], "size": entry["data"]["size"] + 1}
            return entry

        rewrite_chain(db, table="station_ledger", station=STATION, from_seq=item.acquired_seq, edit=edit)
    return [f"station {STATION} checkpoint seq", f"ledger seq {item.acquired_seq}"]


def delete_station_ledger_entry_at_central(t: Target) -> list[str]:
    with attacker_db(t.path("index.db")) as db:
        seq = int(db.execute("SELECT max(seq) FROM station_ledger WHERE type = 'receipt'").fetchone()[0])
        db.execute("DELETE FROM station_ledger WHERE seq = ?", (seq,))
    return [f"station {STATION} ledger seq {seq}"]


def replace_central_public_key(t: Target) -> list[str]:
    write_key_files(t.path("identity"), StationKey.generate(), "signing.key")
    return ["identity/signing.key.pub"]


def replace_central_key_and_resign_log(t: Target) -> list[str]:
    """Whoever holds the central's files makes a key of their own and re-signs every tree head: the
    store is consistent with itself; the stations' ledgers say which key they checked receipts with."""
    impostor = StationKey.generate()
    write_key_files(t.path("identity"), impostor, "signing.key")
    with attacker_db(t.path("index.db")) as db:
        resign_tree_heads(db, impostor)
    return ["identity/signing.key.pub", impostor.key_id]


def replace_enrolled_station_key(t: Target) -> list[str]:
    impostor = StationKey.generate()
    with attacker_db(t.path("index.db")) as db:
        db.execute("UPDATE stations SET public_key = ?, key_id = ? WHERE station = ?",
                   (impostor.public_key_b64, impostor.key_id, STATION))
        db.execute("UPDATE station_keys SET public_key = ?, key_id = ? WHERE station = ?",
                   (impostor.public_key_b64, impostor.key_id, STATION))
    return [f"station {STATION}"]


def delete_newest_console_account_event(t: Target) -> list[str]:
    """The demo auditor's newest account event (its TOTP enrolment) goes: no id gap shows the newest row,
    its seal does (edge.central.sqlite.trail)."""
    with attacker_db(t.path("index.db")) as db:
        row_id, event = db.execute("SELECT id, event FROM account_events ORDER BY id DESC LIMIT 1").fetchone()
        assert event == "totp_enrolled", "the demo enrols its auditor's TOTP last"
        db.execute("DELETE FROM account_events WHERE id = ?", (row_id,))
    return ["account_events", f"row {row_id} was deleted"]


def edit_console_grant_event(t: Target) -> list[str]:
    """Who granted the demo auditor its role, rewritten."""
    with attacker_db(t.path("index.db")) as db:
        row_id = db.execute("SELECT id FROM grant_events WHERE name = 'demo-auditor'").fetchone()[0]
        db.execute("UPDATE grant_events SET by = 'someone-else' WHERE id = ?", (row_id,))
    return ["grant_events", f"row {row_id} was edited"]


CENTRAL_ATTACKS: list[Attack] = [
    flip_byte_in_object,
    truncate_object,
    delete_object,
    edit_index_item_hash,
    edit_index_item_station,
    edit_index_item_case,
    edit_metadata_history,
    plant_in_objects,
    plant_in_uploads,
    plant_in_mqtt_transfers,
    plant_in_central_root,
    plant_in_identity,
    delete_station_checkpoint_at_central,
    delete_signed_tree_head,
    edit_merkle_node,
    edit_merkle_leaf,
    edit_signed_tree_head,
    delete_newest_item_with_its_leaf_nodes_and_heads,
    rewrite_station_ledger_at_central,
    delete_station_ledger_entry_at_central,
    replace_central_public_key,
    replace_central_key_and_resign_log,
    replace_enrolled_station_key,
    delete_newest_console_account_event,
    edit_console_grant_event,
]


def test_untouched_central_copy_verifies(pristine: Pristine, tmp_path: Path) -> None:
    store = copy_tree(pristine.central_store, tmp_path / "central-store")
    verdict = verify_central(store)
    assert verdict.code == 0 and not verdict.failures, str(verdict)


def test_an_upload_in_progress_is_not_a_planted_file(pristine: Pristine, tmp_path: Path) -> None:
    """Control for plant_in_uploads: a tus upload's two files are what the central keeps there."""
    store = copy_tree(pristine.central_store, tmp_path / "central-store")
    upload = uuid.uuid4().hex
    _plant(store / "uploads" / f"{upload}.part")
    _plant(store / "uploads" / f"{upload}.info.json", b"{}")
    verdict = verify_central(store)
    assert verdict.code == 0, str(verdict)


def test_an_mqtt_transfer_in_progress_is_not_a_planted_file(pristine: Pristine, tmp_path: Path) -> None:
    """Control for plant_in_mqtt_transfers: the four files of a transfer the MQTT receiver assembles."""
    store = copy_tree(pristine.central_store, tmp_path / "central-store")
    transfer = uuid.uuid4().hex
    for suffix in (".part", ".info.json", ".segments", ".lock"):
        _plant(store / "mqtt-transfers" / f"{transfer}{suffix}")
    verdict = verify_central(store)
    assert verdict.code == 0, str(verdict)


@pytest.mark.parametrize("attack", CENTRAL_ATTACKS, ids=lambda a: a.__name__)
def test_central_store(attack: Attack, pristine: Pristine, tmp_path: Path) -> None:
    store = copy_tree(pristine.central_store, tmp_path / "central-store")
    touched = attack(Target(store, pristine))
    assert_named(verify_central(store), touched)



# -- across the two: what each side witnessed of the other -----------------------------------------------


def test_a_central_that_dropped_a_station_ledger_tail_is_named_by_the_station(
    pristine: Pristine, tmp_path: Path
) -> None:
    """The central's copy of a station's ledger loses its tail (the erasures after the last receipt)
    with the checkpoints that came with it. The central store stays consistent with itself, so `edge
    verify CENTRAL` cannot see it (nothing of the central records what it witnessed); the station kept the
    heads the central signed for those entries, and its `edge verify` names the central."""
    central = copy_tree(pristine.central_store, tmp_path / "central-store")
    with attacker_db(central / "index.db") as db:
        cut = int(db.execute("SELECT max(seq) FROM station_ledger WHERE station = ? AND type = 'receipt'",
                             (STATION,)).fetchone()[0])
        db.execute("DELETE FROM station_ledger WHERE station = ? AND seq > ?", (STATION, cut))
        db.execute("DELETE FROM station_checkpoints WHERE station = ? AND seq > ?", (STATION, cut))
    assert verify_central(central).code == 0, "the central alone cannot tell (see the docstring)"
    station = copy_tree(pristine.station_store, tmp_path / "station-store")
    (tmp_path / "served").mkdir()
    with serving_central(central, tmp_path / "served") as url:
        config = write_station_config(tmp_path / "station.toml", station, pristine, central_url=url)
        verdict = verify_station(station, config)
    assert_named(verdict, ["central DEMO-CENTRAL", f"only up to seq {cut}",
                           f"witnessed (signed) seq {pristine.ledger_head}"])
    # Control: the same station store against the untouched central verifies.
    control = verify_station(station, write_station_config(tmp_path / "control.toml", station, pristine))
    assert control.code == 0, str(control)
