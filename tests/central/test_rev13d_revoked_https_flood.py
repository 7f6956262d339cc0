"""Review rev13d, MEDIUM: a revoked station's certificate still completes the central's TLS handshake (no CRL
on the HTTPS listener), and every request it sends is refused *and recorded*: a row of the index's
append-only ``rejections`` in a transaction of its own (fsync'd, ``synchronous=FULL``), now written from a
stations' reader thread under the writer mutex the loop's writes take too. Review 8 bounded exactly this
for the MQTT path (``edge.central.record_rate``: a burst of ``RECORDS_PER_MINUTE``, then that many a minute,
the skipped ones counted in the next record); the HTTPS path records every one. The holder of a stolen and
revoked docking station's certificate (the case revocation is for) grows the index without bound and keeps
the stations' two reader threads busy with fsyncs every enrolled station's authentication queues behind.

Control: the same revoked station refused as many times through the broker's path
(``Authenticator.enrolled_station``, the MQTT receiver's check) leaves at most a burst of rows, counted the
same way. Finding: through HTTPS with its certificate, every refusal is a row.
"""

from __future__ import annotations

import pytest

from edge.central.record_rate import RECORDS_PER_MINUTE
from edge.central.registration import Rejection
from tests.central.conftest import FakeStation, HttpCentral, tls_session

# Four bursts' worth: well past what the bounded path records in the test's minute.
FLOOD = 4 * RECORDS_PER_MINUTE


def _recorded(central: HttpCentral, station: FakeStation) -> int:
    return len(central.store_index.rejections(station.station_id))


async def test_control_a_revoked_station_refused_on_the_broker_path_is_recorded_at_a_bounded_rate(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    central = tls_central
    central.enroll_tls(station)
    central.store_index.revoke_station(station.station_id, "stolen with its docking station")
    auth = central.running.parts.auth
    for _ in range(FLOOD):
        with pytest.raises(Rejection):
            await central.running.parts.station_read(auth.enrolled_station, station.station_id, remote="mqtt")
    recorded = _recorded(central, station)
    assert 1 <= recorded <= RECORDS_PER_MINUTE + 1, recorded


async def test_a_revoked_station_s_https_requests_are_recorded_at_a_bounded_rate(
    tls_central: HttpCentral, station: FakeStation
) -> None:
    central = tls_central
    bundle = central.enroll_tls(station)
    central.store_index.revoke_station(station.station_id, "stolen with its docking station")
    statuses = set()
    async with tls_session(bundle) as session:
        for _ in range(FLOOD):
            async with session.get(f"{central.url}/v1/stations/{station.station_id}/ledger/head") as response:
                statuses.add(response.status)
                await response.read()
    assert statuses == {403}, statuses  # every one refused, which is right
    recorded = _recorded(central, station)
    assert recorded <= RECORDS_PER_MINUTE + 1, (
        f"{recorded} refusals of one revoked station's {FLOOD} HTTPS requests were written to the index (a "
        f"transaction and an fsync each, from the stations' reader threads); its MQTT requests are recorded "
        f"at most {RECORDS_PER_MINUTE} a minute after a burst")
