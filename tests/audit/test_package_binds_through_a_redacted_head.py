"""Review 5: with format 2, the checkpoint ending a segment at a redacted head line binds nothing.

The segment now runs to the central's head, which in the field is usually another case's entry, so the
checkpoint that ends it sits at a redacted line. ``verify_package`` counts the final checkpoint as an anchor
only when the final entry is whole (``anchored[station].add(final.seq)`` only for a LedgerEntry), and
``_check_binding`` starts its backwards walk with ``reached = False``: so from a station signing a checkpoint
every 64 entries, a disclosed entry after the case's last own checkpoint is reported NOT BOUND (exit 5),
though its chain to the final checkpoint runs through format-2 lines whose hashes the verifier recomputed.
The commit says "packages from format-2 stations bind at any checkpoint cadence"; its test's head is the
station's whole ``station_stopped`` entry (the harness stops the station before building).

Here the package is the one the honest central builds when its head is a redacted line: OTHER_CASE's genuine
package cut at the clerk's tag of CASE (a redacted line there, which ``tag_item`` signed a checkpoint at),
with that checkpoint, from the central's own index, as the segment's end and the stated head.
"""

from __future__ import annotations

from pathlib import Path

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from tests.audit.conftest import OTHER_CASE, AuditCentral
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.audit.test_package_item_chain import (
    CHECKPOINTS,
    LEDGER,
    STATION,
    _index,
    _package,
    _set_final_checkpoint,
    _verify,
)
from tests.audit.test_package_trust import _pin


async def test_a_segment_ending_at_a_redacted_head_binds_from_a_format_2_station_signing_every_64(
    audit_central_every_64_format_2: AuditCentral, tmp_path: Path
) -> None:
    central = audit_central_every_64_format_2
    pinned = _pin(central, tmp_path)
    folder = await _package(central, tmp_path, "b", OTHER_CASE)
    assert _verify(pinned, folder).code == 0  # control: the genuine package, ending at station_stopped
    docs = read_lines(folder, LEDGER)
    index = _index(folder)
    items = set(index["coverage"][STATION]["item_last_seq"])
    signed = {cp.seq: cp for cp in central.index.checkpoints(STATION)}
    # The package the central builds while its head is a redacted line it holds a station checkpoint at,
    # after the items' sealed entries (the central holds an item from its upload on): the clerk's tag of
    # the other case's item at the latest (tag_item signs one there). Which shown entries carry a checkpoint
    # of their own depends on when the uplink pushed, so none is shipped: every shown entry must bind
    # through the format-2 lines to the final checkpoint.
    sealed = max(d["seq"] for d in docs if d.get("type") == "sealed" and d.get("item") in items)
    heads = [d for d in docs if d["seq"] > sealed and d.get("redacted") and d["seq"] in signed]
    assert heads, "the clerk's tag of the other case's item is a redacted line with a checkpoint"
    head = heads[0]
    assert "item_tag" in head  # format 2: its hash is recomputed from its parts
    cut = [d for d in docs if d["seq"] <= head["seq"]]
    shown = {d["seq"] for d in cut if not d.get("redacted")}
    unsigned = sorted(shown)
    write_lines(folder, LEDGER, cut)
    assert shown and unsigned  # control: shown entries whose binding rests on the final checkpoint alone
    write_lines(folder, CHECKPOINTS, [])
    _set_final_checkpoint(folder, signed[head["seq"]].to_dict())
    last = {item: max(d["seq"] for d in cut if d.get("item") == item) for item in items}
    index["coverage"][STATION] = {"head_seq": head["seq"], "head_hash": head["hash"], "item_last_seq": last}
    (folder / "package.json").write_bytes(canonical_json(index))
    resign_all(folder, load_signing_key(central.config).sign)

    verdict = _verify(pinned, folder)
    assert "NOT BOUND" not in verdict.stdout, (
        f"shown entries {unsigned} chain through format-2 lines to the station's checkpoint at redacted seq "
        f"{head['seq']}, the segment's end:\n{verdict}")
