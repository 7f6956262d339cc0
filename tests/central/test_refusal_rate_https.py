"""Refusals of a revoked certificate's HTTPS requests are recorded at the bounded rate of
``edge.central.record_rate``, the same rule (one instance) as the broker's path: a burst, then so many a
minute per station (or reader), the ones not written counted in the next record and in
``edge_central_refusals_not_recorded_total``. Every request is still refused.

The fix of review rev13d's MEDIUM finding (tests/central/test_rev13d_revoked_https_flood.py is its
measure); here: the count carried by the next record, the metric, the bucket shared with the broker's path,
and readers. Controls: a burst is recorded whole, and a station refused only a few times has each refusal
recorded.
"""

from __future__ import annotations

import re

import pytest

from edge.central.app import METRICS
from edge.central.record_rate import RecordRate
from edge.central.registration import Rejection
from tests.central.conftest import FakeStation, HttpCentral, tls_session

_BURST = 5


def _rows(central: HttpCentral, station: str) -> list[dict[str, object]]:
    return central.store_index.rejections(station)


def _not_recorded_metric(central: HttpCentral) -> float:
    text = central.running.app[METRICS].exposition().decode()
    found = re.search(r"^edge_central_refusals_not_recorded_total (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


async def _head_statuses(central: HttpCentral, bundle: object, station: FakeStation, times: int) -> set[int]:
    statuses = set()
    async with tls_session(bundle) as session:  # type: ignore[arg-type]
        for _ in range(times):
            async with session.get(f"{central.url}/v1/stations/{station.station_id}/ledger/head") as response:
                statuses.add(response.status)
                await response.read()
    return statuses


async def test_control_a_few_refusals_are_each_recorded(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    central = tls_central
    bundle = central.enroll_tls(station)
    central.store_index.revoke_station(station.station_id, "stolen")
    assert await _head_statuses(central, bundle, station, 3) == {403}
    assert len(_rows(central, station.station_id)) == 3
    assert _not_recorded_metric(central) == 0.0


async def test_https_refusals_past_a_burst_are_counted_in_the_next_record_and_the_metric(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    central = tls_central
    now = [0.0]
    central.running.parts.auth.refusal_rate = RecordRate(_BURST, monotonic=lambda: now[0])
    bundle = central.enroll_tls(station)
    central.store_index.revoke_station(station.station_id, "stolen")
    assert await _head_statuses(central, bundle, station, _BURST + 7) == {403}
    assert len(_rows(central, station.station_id)) == _BURST
    assert _not_recorded_metric(central) == 7.0
    now[0] += 60.0  # a minute on: recording resumes, and the first record says what was not
    assert await _head_statuses(central, bundle, station, 1) == {403}
    rows = _rows(central, station.station_id)
    assert len(rows) == _BURST + 1
    assert "7 more of this station were not recorded" in str(rows[-1]["detail"]), rows[-1]


async def test_the_broker_path_and_https_share_one_rate_per_station(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    central = tls_central
    central.running.parts.auth.refusal_rate = RecordRate(_BURST, monotonic=lambda: 0.0)
    bundle = central.enroll_tls(station)
    central.store_index.revoke_station(station.station_id, "stolen")
    assert await _head_statuses(central, bundle, station, _BURST) == {403}
    auth = central.running.parts.auth
    for _ in range(3):
        with pytest.raises(Rejection):
            await central.running.parts.station_read(auth.enrolled_station, station.station_id, remote="mqtt")
    assert len(_rows(central, station.station_id)) == _BURST  # the broker's refusals: past the same burst
    assert _not_recorded_metric(central) == 3.0


async def test_a_revoked_reader_s_refusals_are_recorded_at_the_bounded_rate(tls_central: HttpCentral) -> None:
    central = tls_central
    central.running.parts.auth.refusal_rate = RecordRate(_BURST, monotonic=lambda: 0.0)
    bundle = central.enroll_reader_tls("auditor-1")
    central.store_index.revoke_reader("auditor-1", "left the unit")
    statuses = set()
    async with tls_session(bundle) as session:
        for _ in range(_BURST + 4):
            async with session.get(f"{central.url}/v1/log/tree-head") as response:
                statuses.add(response.status)
                await response.read()
    assert statuses == {403}, statuses
    recorded = [row for row in central.store_index.rejections(None)
                if "auditor-1" in str(row["detail"])]
    assert len(recorded) == _BURST, recorded
    assert _not_recorded_metric(central) == 4.0
