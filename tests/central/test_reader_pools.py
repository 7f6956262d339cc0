"""Review 13 (rev13c): a receiver on PostgreSQL reads for stations and for everyone else (console, read side,
auditors, readiness, metrics) in separate reader threads, each kind with its own statement timeout
(``central.index.station_statement_timeout_s`` / ``console_statement_timeout_s``), so that a held table or a
slow search cannot keep a reader thread for as long as it lasts. (The starvation itself:
test_rev13c_reader_pool_starvation.py.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psycopg
import pytest

from edge.central.config import PostgresIndexConfig, parse_central_config
from edge.central.storage import Readers
from edge.config.base import ConfigError
from tests.central.conftest import FakeStation, postgres_index, start_http_central
from tests.central.pg import PostgresDatabaseUnderTest

MINIMAL = '[central]\nid = "central-hq"\nstore_dir = "/srv/central"\n'
INDEX = 'index = {type = "postgresql", url = "postgresql://edge@db.example/central"'


def test_statement_timeouts_default_to_short_for_stations_and_longer_for_the_console() -> None:
    index = parse_central_config(MINIMAL + INDEX + "}\n", "central.toml").central.index
    assert isinstance(index, PostgresIndexConfig)
    assert (index.station_statement_timeout_s, index.console_statement_timeout_s) == (10.0, 30.0)


@pytest.mark.parametrize(("setting", "value", "accepted"), [
    ("station_statement_timeout_s", "2.5", True),
    ("console_statement_timeout_s", "120", True),
    ("station_statement_timeout_s", "0", False),
    ("console_statement_timeout_s", "-1", False),
    ("station_statement_timeout_s", "601", False),
])
def test_a_statement_timeout_out_of_range_is_refused(setting: str, value: str, accepted: bool) -> None:
    text = MINIMAL + INDEX + f", {setting} = {value}}}\n"
    if accepted:
        index = parse_central_config(text, "central.toml").central.index
        assert getattr(index, setting) == float(value)
        return
    with pytest.raises(ConfigError) as caught:
        parse_central_config(text, "central.toml")
    assert setting in str(caught.value)


async def test_each_kind_of_reader_has_its_threads_and_its_statement_timeout(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = {**postgres_index(pg_database, monkeypatch), "station_statement_timeout_s": 1.5,
             "console_statement_timeout_s": 45}
    central = await start_http_central(tmp_path, dev=True, index=index)
    try:
        unit = central.running.parts.index.unit

        def seen() -> tuple[str, str]:
            conn = central.running.parts.index.unit.conn  # type: ignore[attr-defined]
            row = conn.execute("SHOW statement_timeout").fetchone()
            return threading.current_thread().name, str(row[0])

        station_thread, station_timeout = await unit.run_reads(seen, Readers.STATIONS)
        console_thread, console_timeout = await unit.run_reads(seen, Readers.CONSOLE)
        assert (station_timeout, console_timeout) == ("1500ms", "45s")
        assert "stations" in station_thread and "console" in console_thread
        # Control: the loop's own connection (outside any reader) keeps the server's default.
        assert seen()[1] == "0"
    finally:
        await central.running.stop()


@pytest.mark.parametrize("locked", [True, False], ids=["held-table-cancelled", "control-free-table"])
async def test_a_station_read_waiting_past_its_timeout_is_cancelled(
    tmp_path: Path, pg_database: PostgresDatabaseUnderTest, monkeypatch: pytest.MonkeyPatch,
    station: FakeStation, locked: bool,
) -> None:
    index = {**postgres_index(pg_database, monkeypatch), "station_statement_timeout_s": 0.5}
    central = await start_http_central(tmp_path, dev=True, index=index)
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with pg_database.admin() as other, other.transaction():
            other.execute("LOCK TABLE stations IN ACCESS EXCLUSIVE MODE")
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    try:
        parts = central.running.parts
        parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
        if locked:
            holder.start()
            assert await asyncio.to_thread(held.wait, 60)
            with pytest.raises(psycopg.errors.QueryCanceled):
                await parts.station_read(parts.index.station, station.station_id)
        else:
            record = await parts.station_read(parts.index.station, station.station_id)
            assert record is not None and record.station == station.station_id
    finally:
        release.set()
        if holder.is_alive():
            await asyncio.to_thread(holder.join, 60)
        await central.running.stop()
