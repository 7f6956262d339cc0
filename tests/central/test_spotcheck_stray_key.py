"""Review 6, spot checks and key epochs: since a6604f2 a spot check checks the station's stored rotations
as a package's key_rotations.jsonl, which requires every enrolled key of the station to be on the rotation
chain. A station that was once enrolled with a key it never signed with (the administrator gave
`edge central enroll` the wrong public key file and enrolled it again with the right one; or a station
re-enrolled with a new key before `edge keys rotate` existed) keeps that key in ``station_keys`` for
ever (nothing removes one), and every spot check of every item of that station now reports a ledger
problem: "key ... is listed, but no key_rotated entry ... introduces or retires it". Before a6604f2 the
same item checked clean (a key no rotation names was trusted over the segment). The finding is on
every item, so it hides real problems in the noise, and there is no remedy but editing index.db.

Expected: a key that no stored checkpoint of the station was signed with does not fail the check (or the
check names it once per station as a note, not as a problem of every item).
"""

from __future__ import annotations

from edge.central.spotcheck import _rotations, _rotations_of
from edge.custody.keys import StationKey
from tests.central.conftest import CentralParts, FakeStation, enroll


async def test_a_key_enrolled_by_mistake_and_never_used_does_not_fail_every_spot_check(
    parts: CentralParts, station: FakeStation
) -> None:
    path = station.station_id
    parts.index.enroll_station(path, StationKey.generate().public_key_b64, "e" * 64)  # the wrong file
    enroll(parts.index, station)  # corrected at once, before the station pushed anything
    station.acquire(b"evidence")
    await parts.registrar.accept_segment(parts.caller(path), path, station.segment(0))
    keys = parts.index.station_keys(path)
    assert len(keys) == 2  # control: both stay enrolled
    # Control: with only the key the station signs with, nothing to report.
    assert _rotations(parts.index, path, {station.key.key_id: station.key.public_key})[1] == []
    # Control: with every enrolled key the mistaken one is named (what a package listing it would say).
    assert _rotations(parts.index, path, keys)[1]
    _, problems, in_use = _rotations_of(parts, path)  # type: ignore[arg-type]
    assert set(in_use) == {station.key.key_id}
    assert [str(p) for p in problems] == [], (
        "a key enrolled by mistake and never used makes every spot check of the station's items report "
        "a ledger problem")
