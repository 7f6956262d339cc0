"""Independent review 13 (rev13c): the MQTT receiver checks the station of every file-transfer command
(init, each segment, fin) with ``station_check`` (app.py: ``parts.auth.enrolled_station``, a read of the
station's row, and on a refusal a rejection written in a transaction behind the writer lock) called
synchronously in ``MqttReceiver._carry_out``, on the event loop: not through ``run_reads``. On PostgreSQL a
read that waits (``stations`` held by a maintenance, a restarting server) stalls every request of the
receiver; the loop guard test does not see it (a callable attribute).

Here the receiver's ``_carry_out`` runs with the station check exactly as the application builds it over a
central on PostgreSQL, while another session holds a lock on ``stations``; once the check's read is seen
waiting, the same receiver's ``/healthz`` is asked from another thread. Expected: answered. Control: with
``items`` locked instead (nothing the check reads) the probe is answered, so the probe itself works.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from edge.central.mqtt_ingest_store import Outcome
from edge.central.mqtt_receiver import MqttReceiver, ReceiverCounts, station_check_of
from edge.mqtt.filetransfer import ReasonCode
from tests.central.conftest import FakeStation, postgres_index, start_http_central
from tests.central.lock_probe import LockHold, lock_waiters, table_lock
from tests.central.pg import PostgresDatabaseUnderTest


class _Store:
    def carry_out(self, station: str, command: Any, payload: bytes) -> Outcome:
        return Outcome(command, ReasonCode.SUCCESS, "")


@pytest.mark.parametrize("table", ["stations", "items"], ids=["check-waits", "control-unrelated-lock"])
async def test_an_mqtt_commands_station_check_waiting_on_postgresql_leaves_healthz_answered(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, table: str,
) -> None:
    central = await start_http_central(tmp_path, dev=True, index=postgres_index(pg_database, monkeypatch))
    parts = central.running.parts
    receiver = MqttReceiver.__new__(MqttReceiver)  # only what _carry_out uses, as build_app wires it
    receiver._station_check = station_check_of(lambda s: parts.auth.enrolled_station(s, remote="mqtt"),
                                               reads=parts.station_read)
    receiver.store = _Store()  # type: ignore[assignment]
    receiver.counts = ReceiverCounts()

    async def answered(*args: Any, **kwargs: Any) -> None:
        return None

    receiver._answer_transfer = answered  # type: ignore[method-assign]
    checked = threading.Event()
    probe = LockHold(pg_database, table_lock(table),
                     waiter=lambda: lock_waiters(pg_database, wait_event="relation") > 0,
                     stop_looking=checked, healthz_url=central.url)
    try:
        central.store_index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        await probe.start()
        await receiver._carry_out(station.station_id, object(), b"", None,  # type: ignore[arg-type]
                                  await_broker=False)
        checked.set()
        await probe.join()
        assert receiver.counts.commands == 1 and receiver.counts.refused_commands == 0
        if table == "stations":
            assert probe.waiter_seen, "the station check's read was never seen waiting"
        assert probe.healthz_status == 200, (
            f"/healthz was not answered while an MQTT command's station check waited on {table} "
            f"({probe.healthz_error}): the check runs on the event loop")
    finally:
        await central.running.stop()
