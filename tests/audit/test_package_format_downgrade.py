"""Review 5: a central hides an item's entries as format-1 redacted lines in a format-2 ledger: NOT COMPLETE,
with the central's excuse printed for it.

A station writes format 2 from its upgrade on; a format-1 line (no item_tag) after a format-2 entry of the
same segment cannot be genuine (the package even shows the station's format-2 entries just before it).
Shipping the hidden entries that way turns "exit 1: item X's entry hidden at seq N" (what the true tag
gives) into "exit 6 NOT COMPLETE ... redacted lines of ledger format 1 (written before stations tagged
them ...)": the verdict explains the hiding with a history that the package itself contradicts, and the
central gets deniability for a proven act. Expected: a format-1 redacted line after a format-2 entry is a
problem naming its seq (exit 1).
"""

from __future__ import annotations

from pathlib import Path

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from tests.audit.conftest import AuditCentral
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.audit.test_package_item_chain import CHECKPOINTS, LEDGER, STATION, _index, _package, _verify
from tests.audit.test_package_trust import _pin


async def test_format_1_lines_after_format_2_entries_are_a_problem_not_an_old_station(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central, tmp_path)
    folder = await _package(audit_central, tmp_path, "p")
    docs = read_lines(folder, LEDGER)
    sealed = next(d for d in docs if not d.get("redacted") and d["item"] and d["type"] == "sealed"
                  and d["item"] != audit_central.evidence.tagged_item)
    item = sealed["item"]
    hide = {d["seq"] for d in docs
            if not d.get("redacted") and d["item"] == item and d["seq"] > sealed["seq"]}
    assert hide and "entry_salt" in sealed["data"]  # the station wrote format 2 before the hidden entries
    write_lines(folder, LEDGER, [{"seq": d["seq"], "prev": d["prev"], "hash": d["hash"], "redacted": True}
                                 if d["seq"] in hide else d for d in docs])
    write_lines(folder, CHECKPOINTS, [c for c in read_lines(folder, CHECKPOINTS) if c["seq"] not in hide])
    index = _index(folder)
    index["coverage"][STATION]["item_last_seq"][item] = sealed["seq"]
    (folder / "package.json").write_bytes(canonical_json(index))
    resign_all(folder, load_signing_key(audit_central.config).sign)

    verdict = _verify(pinned, folder)
    assert verdict.code == 1 and any(f"seq {min(hide)}" in line for line in verdict.failures), (
        f"item {item}'s entries {sorted(hide)} shipped as format-1 redacted lines after format-2 entries:\n"
        f"{verdict}")
