"""Every disclosed custody entry of a case is bound to the station's own signature (issue 8, item 5).

The station signs a checkpoint at every ledger entry (``checkpoint_every = 1``) and the package carries
them (ledger/STATION/checkpoints.jsonl), so a disclosed entry needs no chain through other cases' redacted
entries: the checkpoint at its seq signs its recomputed hash. The scenario is two officers docked at two
bays at once, their files of two cases interleaved in one station ledger; the package of one case is
downloaded over mutual TLS, unzipped and checked with the real `edge verify` as a subprocess. The control
is the same run by a station that signs only every 64 entries: its package verifies NOT BOUND (exit 5).
Station entries of no item are shown only when station-level or of a disclosed item's own docking.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey, key_id_of
from edge.custody.ledger import checkpoint_payload
from tests.audit.conftest import CASE, OTHER_CASE, AuditCentral
from tests.audit.test_disclosure_package import unzipped_package
from tests.audit.test_package_trust import LEDGER, _ledger, _pin, _resign, _write_ledger
from tests.tamper.stores import run_edge

CHECKPOINTS = "ledger/TEST-STATION/checkpoints.jsonl"


def _checkpoints(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / CHECKPOINTS).read_text().splitlines()]


def _verify(pinned: Path, folder: Path) -> Any:
    return run_edge("verify", "--central-key", str(pinned), str(folder))


async def test_a_case_interleaved_with_another_verifies_ok(audit_central: AuditCentral,
                                                            tmp_path: Path) -> None:
    pinned = _pin(audit_central, tmp_path)
    for case in (CASE, OTHER_CASE):
        (tmp_path / case).mkdir()
        folder = await unzipped_package(audit_central, tmp_path / case, case)
        docs = _ledger(folder)
        # The case's entries really are interleaved with the other case's: redacted lines lie between them.
        shown = [n for n, d in enumerate(docs) if not d.get("redacted") and d["item"] is not None]
        assert any(docs[k].get("redacted") for k in range(shown[0], shown[-1])), case
        # Every shown entry of the segment carries the station's checkpoint, listed in the signed
        # SHA256SUMS; no redacted line does (its checkpoint would date another case's entry).
        assert {cp["seq"] for cp in _checkpoints(folder)} == {d["seq"] for d in docs if not d.get("redacted")}
        assert f"  {CHECKPOINTS}\n" in (folder / "SHA256SUMS").read_text()
        verdict = _verify(pinned, folder)
        assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
        assert "NOT BOUND" not in verdict.stdout
        answer = json.loads(run_edge("verify", "--json", "--central-key", str(pinned), str(folder)).stdout)
        assert answer["checked"]["ledger_entries_unbound"] == 0
        assert answer["checked"]["station_checkpoints"] == sum(not d.get("redacted") for d in docs)


async def test_a_flipped_byte_fails_and_is_named(audit_central: AuditCentral, tmp_path: Path) -> None:
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    (tmp_path / "p").mkdir()
    pristine = await unzipped_package(audit_central, tmp_path / "p")
    assert _verify(pinned, pristine).code == 0  # control: the untouched package holds

    def copy(name: str) -> Path:
        return Path(shutil.copytree(pristine, tmp_path / name))

    # An original file: the list of files and the item's signed hash both name it.
    folder = copy("original")
    original = next(p for p in (folder / "items").rglob("*") if p.suffix.lower() in (".mp4", ".jpg"))
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01
    original.write_bytes(bytes(data))
    verdict = _verify(pinned, folder)
    assert verdict.code == 1 and verdict.names(original.relative_to(folder).as_posix()), verdict

    # A disclosed entry, one byte of its data: caught by SHA256SUMS; and when the central re-signs the list
    # (what the central alone can do), by the station's checkpoint at that very seq.
    for resign in (False, True):
        folder = copy(f"entry-{resign}")
        docs = _ledger(folder)
        n = next(n for n, d in enumerate(docs) if not d.get("redacted") and d["type"] == "tagged")
        docs[n]["data"]["by"] = "clerk-0" + "2"  # clerk-01 -> clerk-02: one byte
        _write_ledger(folder, docs)
        if resign:
            _resign(folder, sign, [LEDGER])
        verdict = _verify(pinned, folder)
        assert verdict.code == 1 and verdict.names(f"seq {docs[n]['seq']}"), verdict
        assert verdict.names("SHA256SUMS") != resign, verdict

    # A checkpoint's signature, one byte of it, the list re-signed: the line is named.
    folder = copy("signature")
    lines = (folder / CHECKPOINTS).read_bytes().splitlines(keepends=True)
    target = len(lines) // 2
    cp = json.loads(lines[target])
    raw = bytearray(base64.b64decode(cp["signature"]))
    raw[5] ^= 0x01
    cp["signature"] = base64.b64encode(bytes(raw)).decode()
    lines[target] = canonical_json(cp) + b"\n"
    (folder / CHECKPOINTS).write_bytes(b"".join(lines))
    _resign(folder, sign, [CHECKPOINTS])
    verdict = _verify(pinned, folder)
    assert verdict.code == 1 and verdict.names(f"{CHECKPOINTS} line {target + 1}"), verdict
    assert any("does not verify" in line for line in verdict.failures), verdict

    # A redacted line's hash, one hex digit, the list re-signed: the next entry's link names it (the
    # package carries no checkpoint at a redacted line: it would date another case's entry).
    folder = copy("redacted")
    docs = _ledger(folder)
    n = next(n for n, d in enumerate(docs) if d.get("redacted") and n + 1 < len(docs))
    docs[n]["hash"] = docs[n]["hash"][:-1] + ("0" if docs[n]["hash"][-1] != "0" else "1")
    _write_ledger(folder, docs)
    _resign(folder, sign, [LEDGER])
    verdict = _verify(pinned, folder)
    seq = docs[n]["seq"]
    assert verdict.code == 1 and verdict.names(f"seq {seq + 1}"), verdict
    redacted_seqs = {d["seq"] for d in docs if d.get("redacted")}
    assert redacted_seqs and not redacted_seqs & {c["seq"] for c in _checkpoints(folder)}


async def test_checkpoint_lines_outside_the_segment_foreign_or_malformed_are_refused(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central, tmp_path)
    sign = load_signing_key(audit_central.config).sign
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    cps = _checkpoints(folder)
    docs = _ledger(folder)
    assert docs[0]["seq"] <= cps[0]["seq"] and cps[-1]["seq"] <= docs[-1]["seq"]  # only its own seqs
    # A checkpoint moved past the segment, one signed by a key the package does not hold, and a line
    # that is not JSON: each refused, naming its line.
    moved = {**cps[0], "seq": docs[-1]["seq"] + 5}
    stranger = StationKey.generate()
    payload = checkpoint_payload(cps[1]["station"], cps[1]["seq"], cps[1]["hash"], cps[1]["time"])
    foreign = {**cps[1], "key_id": key_id_of(stranger.public_key()),
               "signature": base64.b64encode(stranger.sign(payload)).decode()}
    lines = [canonical_json(c) + b"\n" for c in [*cps, moved, foreign]] + [b"{not json\n"]
    (folder / CHECKPOINTS).write_bytes(b"".join(lines))
    _resign(folder, sign, [CHECKPOINTS])
    verdict = _verify(pinned, folder)
    assert verdict.code == 1, verdict
    assert any(f"{CHECKPOINTS} line {len(cps) + 1}" in line and "outside the segment" in line
               for line in verdict.failures), verdict
    assert any(f"{CHECKPOINTS} line {len(cps) + 2}" in line and "not one of the station's keys" in line
               for line in verdict.failures), verdict
    assert verdict.names(f"{CHECKPOINTS} line {len(cps) + 3}"), verdict


async def test_from_a_format_1_station_signing_every_64_entries_the_same_case_is_not_bound(
    audit_central_every_64: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central_every_64, tmp_path)
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central_every_64, tmp_path / "p")
    docs = _ledger(folder)
    assert len(_checkpoints(folder)) < len(docs)  # the station signed only some entries
    assert not any("item_tag" in d for d in docs)  # format 1: redacted lines carry only their links
    first_shown = next(d["seq"] for d in docs if not d.get("redacted"))
    assert any(d.get("redacted") and d["seq"] > first_shown for d in docs)  # the cases interleave
    # Which entries the station's other checkpoints happen to bind depends on when the uplink pushed (each
    # push ends at an entry it signs): a central may ship none of them. Then only the final checkpoint
    # vouches, and no chain binds through a format-1 redacted line.
    (folder / CHECKPOINTS).write_bytes(b"")
    _resign(folder, load_signing_key(audit_central_every_64.config).sign, [CHECKPOINTS])
    verdict = _verify(pinned, folder)
    assert verdict.code == 5 and "NOT BOUND: disclosure package" in verdict.stdout, verdict
    assert "NOTE NOT BOUND ledger/TEST-STATION seq " in verdict.stdout


async def test_with_ledger_format_2_a_checkpoint_every_64_entries_binds_the_same_case(
    audit_central_every_64_format_2: AuditCentral, tmp_path: Path
) -> None:
    """Format 2: each redacted line's hash is recomputed from its parts, so the chain binds every disclosed
    entry through other cases' entries to the checkpoint at the segment's end, whatever the cadence."""
    pinned = _pin(audit_central_every_64_format_2, tmp_path)
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central_every_64_format_2, tmp_path / "p")
    docs = _ledger(folder)
    assert len(_checkpoints(folder)) < len(docs)
    redacted = [d for d in docs if d.get("redacted")]
    assert redacted and all(set(d) == {"seq", "prev", "hash", "redacted", "item_tag", "body_sha256"}
                            for d in redacted)
    verdict = _verify(pinned, folder)
    assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
    assert "NOT BOUND" not in verdict.stdout
    # Without the station's other checkpoints too (the control for the format-1 test above): the chain
    # binds through format-2 lines to the final checkpoint.
    signed_lines = (folder / CHECKPOINTS).read_bytes()
    (folder / CHECKPOINTS).write_bytes(b"")
    _resign(folder, load_signing_key(audit_central_every_64_format_2.config).sign, [CHECKPOINTS])
    alone = _verify(pinned, folder)
    assert alone.code == 0 and "NOT BOUND" not in alone.stdout, alone
    (folder / CHECKPOINTS).write_bytes(signed_lines)
    # Control: one redacted line's body digest changed (its hash left as it was) breaks the chain there.
    seq = redacted[0]["seq"]
    edited = [{**d, "body_sha256": "0" * 64} if d["seq"] == seq else d for d in docs]
    (folder / LEDGER).write_bytes(b"".join(canonical_json(d) + b"\n" for d in edited))
    _resign(folder, load_signing_key(audit_central_every_64_format_2.config).sign, [LEDGER, CHECKPOINTS])
    broken = _verify(pinned, folder)
    assert broken.code == 1 and any(f"seq {seq}" in line and "does not match its hash" in line
                                    for line in broken.failures), broken


async def test_another_officers_docking_is_redacted_and_the_items_own_docking_shown(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    # The other case holds only officer 李娜's items (bay 2); officer 张伟 docked at bay 1 at the same time.
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p", OTHER_CASE)
    docs = _ledger(folder)
    text = (folder / LEDGER).read_text(encoding="utf-8")
    shown = [d for d in docs if not d.get("redacted")]
    own = {d["type"] for d in shown if d["item"] is None and "李娜" in json.dumps(d, ensure_ascii=False)}
    assert {"device_authenticated", "session_started"} <= own, own
    session = next(d for d in shown if d["type"] == "session_started")["data"]["session"]
    assert any(d["type"] == "session_stopped" and d["data"]["session"] == session for d in shown)
    usb = next(d for d in shown if d["type"] == "session_started")["data"]["identity"]["usb_serial"]
    assert any(d["type"] == "device_connected" and d["data"].get("usb_serial") == usb for d in shown)
    assert any(d["type"] == "clock_measured" and d["data"].get("usb_serial") == usb for d in shown)
    # The other officer's docking lies inside the segment but shows nothing: no name, number or device.
    assert "张伟" not in text and "110001" not in text and "3300001" not in text
    assert all(d["data"].get("bay") in (2, None) for d in shown if d["item"] is None), shown
    assert sum(d.get("redacted", False) for d in docs) >= 5
    # Station-level entries stay whole: the station's start declares the checkpoint cadence.
    assert any(d["type"] == "station_stopped" for d in shown) or docs[0]["seq"] > 1
    assert _verify(_pin(audit_central, tmp_path), folder).code == 0
