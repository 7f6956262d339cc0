"""A key enrolled by mistake and corrected at once stays in the central's index for ever but signed nothing:
packages of the station list only its keys in use (the current one and those its key rotations name), so
they verify; before, the stray key was listed and every package failed it as a key no rotation introduces
(review 6, finding 7)."""

from __future__ import annotations

from pathlib import Path

from edge.custody.keys import StationKey
from tests.audit.conftest import AuditCentral
from tests.audit.test_disclosure_package import unzipped_package
from tests.audit.test_package_item_chain import STATION, _index, _verify
from tests.audit.test_package_trust import _pin


async def test_a_package_does_not_list_a_key_enrolled_by_mistake(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    pinned = _pin(audit_central, tmp_path)
    record = audit_central.index.station(STATION)
    assert record is not None
    stray = StationKey.generate()
    # The wrong public key file given to `edge central enroll`, then the right one again.
    audit_central.index.enroll_station(STATION, stray.public_key_b64, record.cert_sha256)
    audit_central.index.enroll_station(STATION, record.public_key_b64, record.cert_sha256)
    assert stray.key_id in audit_central.index.station_keys(STATION)  # control: it stays enrolled
    (tmp_path / "p").mkdir()
    folder = await unzipped_package(audit_central, tmp_path / "p")
    assert stray.key_id not in _index(folder)["stations"][STATION]
    verdict = _verify(pinned, folder)
    assert verdict.code == 0 and "OK: disclosure package" in verdict.stdout, verdict
