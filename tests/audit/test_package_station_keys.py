"""Station keys in a package are the central's word unless pinned (review finding 2).

package.json lists the station's keys and only the central's signature vouches for that list: a central
(or anyone with its key) adds a key of its own as a second "station key", rewrites a disclosed entry,
re-links the whole entries after it and signs their checkpoints with its key. `edge verify PACKAGE
--station-key FILE` (the station's public key obtained from the station, repeatable) trusts only pinned
station keys, so that rewrite fails; without pins an OK verdict says each station key's fingerprint is as
enrolled at the central, so a reader can compare it with the station's.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edge.central.identity import load_signing_key
from edge.custody.canonical import canonical_json
from edge.custody.keys import StationKey, key_id_of, load_public_key
from edge.custody.ledger import checkpoint_payload, entry_hash
from tests.audit.conftest import AuditCentral
from tests.audit.package_edits import read_lines, resign_all, write_lines
from tests.audit.test_disclosure_package import unzipped_package
from tests.audit.test_package_trust import _pin, central_key_fingerprint
from tests.tamper.stores import run_edge

STATION = "TEST-STATION"
LEDGER = f"ledger/{STATION}/entries.jsonl"
CHECKPOINTS = f"ledger/{STATION}/checkpoints.jsonl"
CHECKPOINT = f"ledger/{STATION}/checkpoint.json"
TIME = "2026-12-05T00:00:00.000000Z"





def _set_final_checkpoint(folder: Path, cp: dict[str, Any]) -> None:
    (folder / CHECKPOINT).write_bytes(canonical_json(cp))
    (folder / f"ledger/{STATION}/checkpoint.payload").write_bytes(
        checkpoint_payload(cp["station"], cp["seq"], cp["hash"], cp["time"]))
    (folder / f"ledger/{STATION}/checkpoint.sig").write_bytes(base64.b64decode(cp["signature"]))


def _forge_with_a_key_of_the_centrals(folder: Path, sign: Any) -> StationKey:
    """Rewrite who tagged a disclosed item and re-sign the chain after it with a central-made key."""
    docs = read_lines(folder, LEDGER)
    n = next(n for n, d in enumerate(docs) if not d.get("redacted") and d["type"] == "tagged")
    docs[n]["data"]["by"] = "someone-else"
    mine = StationKey.generate()
    resigned: dict[int, dict[str, Any]] = {}
    prev = docs[n]["prev"]
    for doc in docs[n:]:
        doc["prev"] = prev
        if doc.get("redacted"):
            break  # a redacted line's hash is never recomputed: the chain after it is untouched
        doc["hash"] = entry_hash({k: doc[k] for k in ("seq", "time", "type", "item", "data", "prev")})
        prev = doc["hash"]
        signature = mine.sign(checkpoint_payload(STATION, doc["seq"], doc["hash"], TIME))
        resigned[doc["seq"]] = {"station": STATION, "seq": doc["seq"], "hash": doc["hash"], "time": TIME,
                                "key_id": mine.key_id, "signature": base64.b64encode(signature).decode()}
    write_lines(folder, LEDGER, docs)
    write_lines(folder, CHECKPOINTS, [resigned.get(c["seq"], c) for c in read_lines(folder, CHECKPOINTS)])
    final = json.loads((folder / CHECKPOINT).read_text())
    _set_final_checkpoint(folder, resigned.get(final["seq"], final))
    index = json.loads((folder / "package.json").read_text())
    index["stations"][STATION].append(mine.key_id)
    (folder / "package.json").write_bytes(canonical_json(index))
    (folder / f"keys/station-{STATION}-{mine.key_id}.pem").write_bytes(mine.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    resign_all(folder, sign)
    return mine


async def test_a_station_key_of_the_centrals_choosing_fails_when_the_station_key_is_pinned(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central, tmp_path)
    (tmp_path / "p").mkdir()
    genuine = await unzipped_package(audit_central, tmp_path / "p")
    # The station's own public key, as obtained from the station (the same bytes as its enrolled key).
    station_pub = tmp_path / "station.pub"
    (listed,) = (genuine / "keys").glob(f"station-{STATION}-*.pem")
    shutil.copyfile(listed, station_pub)
    station_fingerprint = central_key_fingerprint(load_public_key(station_pub))

    # Controls: the genuine package verifies OK with the key pinned, and without it says whose word the
    # station key is, with its fingerprint.
    pin_station = ("--station-key", str(station_pub))
    verdict = run_edge("verify", "--central-key", str(pinned), *pin_station, str(genuine))
    assert verdict.code == 0 and "AS ENROLLED AT THE CENTRAL" not in verdict.stdout, verdict
    verdict = run_edge("verify", "--central-key", str(pinned), str(genuine))
    assert verdict.code == 0, verdict
    station_id = key_id_of(load_public_key(station_pub))
    assert f"STATION KEY AS ENROLLED AT THE CENTRAL: station {STATION} key {station_id}" in verdict.stdout
    assert station_fingerprint in verdict.stdout, verdict.stdout

    forged = Path(shutil.copytree(genuine, tmp_path / "forged"))
    mine = _forge_with_a_key_of_the_centrals(forged, load_signing_key(audit_central.config).sign)
    # Unpinned, the package's keys are the central's word, and the caveat shows the foreign key's
    # fingerprint next to the station's, for a reader to compare; a key merely added to the list is refused
    # even so, since no key rotation the package ships introduces it (key_rotations.jsonl). A central that
    # also fabricates a lost-key rotation to its key is stopped only by pinning, below.
    verdict = run_edge("verify", "--central-key", str(pinned), str(forged))
    assert verdict.code == 1 and central_key_fingerprint(mine.public_key()) in verdict.stdout, verdict
    assert f"station {STATION} key {mine.key_id}: is listed, but no key_rotated entry" in verdict.stdout
    # Pinned, every checkpoint the central-made key signed fails, naming its line.
    verdict = run_edge("verify", "--central-key", str(pinned), *pin_station, str(forged))
    assert verdict.code == 1, verdict
    assert f"key {mine.key_id} is listed in package.json but not pinned" in verdict.stdout
    assert verdict.names(CHECKPOINTS), verdict
