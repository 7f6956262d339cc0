"""Review 5: an item acquired before the station's upgrade to ledger format 2 and tagged after it.

The usual life of evidence at an upgraded agency: recorded, docked and uploaded under the old release
(format-1 entries, interleaved with another officer's), then a clerk tags it into its case after the
upgrade (a format-2 ``tagged`` entry, the item's last). Every format-1 redacted line of the package lies
*between* the item's first and last entries, where the item chain (``item_prev``, walked back from the last
entry) already shows that none of them is the item's; after the last entry every redacted line is format 2,
whose tag the verifier tests. Nothing can be hidden, yet ``_format1_gaps`` counts format-1 lines after the
item's *first* entry, so the genuine package verifies NOT COMPLETE (exit 6) instead of OK: every package of
pre-upgrade evidence tagged after the upgrade does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.central.embedded import EmbeddedCentral
from edge.central.index import ItemQuery, ReaderScope, Role
from edge.custody.ledger import Ledger
from edge.ingest.tagging import tag_item
from tests.audit.conftest import (
    CASE,
    FAST,
    OTHER_CASE,
    STATION,
    UNIT_A,
    UNIT_B,
    StationEvidence,
    _audit_central,
)
from tests.audit.package_edits import read_lines
from tests.audit.test_package_item_chain import LEDGER, _package, _verify
from tests.audit.test_package_trust import _pin
from tests.station.harness import eventually, simulated_station, spec


async def _run_upgraded_station(root: Path) -> StationEvidence:
    """Two officers dock under the release before format 2; then the station 'upgrades' (format 2) and a
    clerk tags each of officer A's items into CASE."""
    central = await EmbeddedCentral.start(root, STATION, root / "store")
    specs = [
        spec(0, files=5, unit_code=UNIT_A[0], unit_name=UNIT_A[1]),
        spec(1, files=3, unit_code=UNIT_B[0], unit_name=UNIT_B[1], officer_name="李娜"),
    ]
    try:
        with pytest.MonkeyPatch.context() as old_release:
            old_release.setattr(Ledger, "_with_salt", staticmethod(lambda data: dict(data)))
            async with simulated_station(
                root, specs, uplink={**central.uplink_config(), **FAST},
                wipe={"policy": "after-receipt", "receipt_wait_s": 60},
                officers={specs[0].officer_no: {"case_number": CASE},
                          specs[1].officer_no: {"case_number": OTHER_CASE}},
            ) as station:
                await station.dock_recorder(specs[0].device_serial, 1)
                await station.dock_recorder(specs[1].device_serial, 2)
                await station.wait_results(2)
                store = station.agent.store
                assert store is not None
                index = central.running.parts.index
                await eventually(lambda: index.ledger_head(STATION)[0] == store.ledger.head()[0], 30)
                old_release.undo()  # the upgrade: every entry from here on is format 2
                everything = ReaderScope("test", Role.SUPERVISOR, frozenset())
                page, _ = index.query_items(ItemQuery(officer_no=specs[0].officer_no, limit=1000), everything)
                assert len(page) == 5
                for row in page:
                    tag_item(store, row["item"], {"case_number": CASE}, by="clerk-01")
                await eventually(lambda: index.ledger_head(STATION)[0] == store.ledger.head()[0], 30)
    finally:
        await central.stop()
    return StationEvidence(central.store_dir, {}, {}, 0, "")


async def test_pre_upgrade_evidence_tagged_after_the_upgrade_verifies_ok(tmp_path: Path) -> None:
    evidence = await _run_upgraded_station(tmp_path / "run")
    async for central in _audit_central(tmp_path / "central", evidence):
        pinned = _pin(central, tmp_path)
        folder = await _package(central, tmp_path, "p", CASE)
        docs = read_lines(folder, LEDGER)
        old_lines = [d["seq"] for d in docs if d.get("redacted") and "item_tag" not in d]
        whole = [d for d in docs if not d.get("redacted")]
        last_tag = max(d["seq"] for d in whole if d["type"] == "tagged")
        # The premise: the package does hold format-1 redacted lines, all before the items' last entries
        # (their format-2 tags), and the tags are the last entries of the items.
        assert old_lines and max(old_lines) < min(d["seq"] for d in whole if d["type"] == "tagged")
        assert all(not d["item"] or d["seq"] <= last_tag for d in whole)
        verdict = _verify(pinned, folder)
        assert verdict.code == 0, (
            f"format-1 redacted lines {old_lines[0]}-{old_lines[-1]} all lie before the items' last entries "
            f"(format-2 tags up to seq {last_tag}), where the item chain rules them out:\n{verdict}")
