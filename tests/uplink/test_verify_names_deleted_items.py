"""`edge verify STORE` names the item an attacker deleted with every ledger entry about it, the chain
rewritten and re-signed with the station key: from the central's copy of the station ledger (a real
central behind a real proxy, the real command line in its own process). A copy that does not chain to
the head the central signed as witnessed (a proxy hiding the item's entries) is not believed: nothing is
named from it, a note says why, and the store still fails on the witnessed head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey
from edge.custody.ledger import entry_hash
from tests.tamper.attacker import attacker_db, resign_checkpoints, rewrite_chain
from tests.uplink.proxy import Fault
from tests.uplink.test_refusals import Rig, drain, make_rig, media, station_toml
from tests.uplink.test_witness_clear import edge_cli_async

__all__ = ["media"]  # the fixture, used by name

LEDGER_PAGE = r"/v1/stations/[^/]+/ledger"


def delete_item_everywhere(store: Path, item: str, path: str, acquired_seq: int) -> None:
    """What the tamper matrix's strongest station attack does: files, rows, ledger entries, checkpoints
    re-signed, witnessed heads (kept and in receipts) of the rewritten part removed."""
    for relative in (path, path + ".manifest.json", path + ".receipt.json"):
        (store / relative).unlink(missing_ok=True)
    with attacker_db(store / "state.db") as db:
        for table in ("uploads", "acquisitions", "items"):
            db.execute(f"DELETE FROM {table} WHERE item = ?", (item,))
        rewrite_chain(db, from_seq=acquired_seq, edit=lambda entry: None if entry["item"] == item else entry)
        key = StationKey.load_or_create(store / "keys" / "station.key")
        resign_checkpoints(db, key, from_seq=acquired_seq)
        db.execute("DELETE FROM witnessed_heads WHERE seq >= ?", (acquired_seq,))
    for receipt in (store / "items").rglob("*.receipt.json"):
        doc = json.loads(receipt.read_text())
        if doc.get("witnessed_head", {}).get("seq", 0) >= acquired_seq:
            del doc["witnessed_head"]
            doc["format"] = "evidence-edge/receipt/1"
            receipt.write_bytes(canonical_json(doc))


def hiding_page(rig: Rig, item: str) -> Any:
    """A proxy's page of the real central's entries with the item's entries left out and the rest
    re-chained (each hash recomputed): it looks whole, but cannot reach the head the central signed."""

    def answer(request: web.Request, _body: bytes) -> tuple[int, dict[str, str], bytes]:
        index = rig.central.parts.index
        station = request.path.split("/")[3]  # /v1/stations/{station}/ledger
        after = int(request.query.get("after", "0"))
        entries = [e for e in index.ledger_entries(station, after + 1) if e.item != item]
        before = index.ledger_entry(station, after) if after else None
        assert before is not None or not after
        prev = before.hash if before is not None else entries[0].prev
        forged = []
        for seq, entry in enumerate(entries, start=after + 1):
            body = {**entry.body(), "seq": seq, "prev": prev}
            prev = entry_hash(body)
            forged.append({**body, "hash": prev})
        record = index.station(station)
        assert record is not None
        witnessed = rig.central.parts.registrar.witnessed_head(record)
        doc = {"station": station, "after": after, "entries": forged, "next": None,
               "head": {"seq": forged[-1]["seq"], "hash": prev},
               "witnessed_head": None if witnessed is None else witnessed.to_dict()}
        return 200, {"Content-Type": "application/json"}, canonical_json(doc)

    return answer


async def test_verify_names_the_deleted_item_and_disbelieves_a_copy_that_hides_it(
    tmp_path: Path, media: Path
) -> None:
    async with make_rig(tmp_path, media) as rig:
        await drain(rig)
        assert rig.states() == {"clip.mp4": "receipted", "scene.jpg": "receipted"}
        item, path, acquired_seq = rig.store.conn.execute(
            "SELECT items.item, items.path, ledger.seq FROM items JOIN ledger ON ledger.item = items.item "
            "AND ledger.type = 'acquired' ORDER BY ledger.seq DESC LIMIT 1").fetchone()
        config = station_toml(rig)
        rig.store.close()
        store = tmp_path / "store"
        untouched = await edge_cli_async("verify", str(store), "--config", str(config))
        assert untouched.returncode == 0, untouched.stdout + untouched.stderr  # the control
        delete_item_everywhere(store, item, path, acquired_seq)

        named = await edge_cli_async("verify", str(store), "--config", str(config))
        assert named.returncode == 1, named.stdout + named.stderr
        fails = [line for line in named.stdout.splitlines() if line.startswith("FAIL ")]
        about = [line for line in fails if line.startswith(f"FAIL item {item}:")]
        assert len(about) == 1 and "lacks every entry about it" in about[0], named.stdout
        assert any(line.startswith("FAIL witnessed head seq") for line in fails), named.stdout
        assert "Traceback" not in named.stderr

        rig.proxy.faults.append(Fault("GET", LEDGER_PAGE, hiding_page(rig, item), times=0))
        hidden = await edge_cli_async("verify", str(store), "--config", str(config))
        assert hidden.returncode == 1, hidden.stdout + hidden.stderr
        assert f"FAIL item {item}" not in hidden.stdout
        assert any(line.startswith("FAIL witnessed head seq") for line in hidden.stdout.splitlines())
        assert "NOTE the central's copy of this ledger ends at seq" in hidden.stdout, hidden.stdout
        assert rig.proxy.count("GET", LEDGER_PAGE) >= 1
