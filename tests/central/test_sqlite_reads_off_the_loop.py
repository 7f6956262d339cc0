"""Issue 13: the embedded SQLite index's reads ran inline on the event loop (only PostgreSQL's went through
the reader threads), so a long auditor search of a one-site central stalled everything else it serves:
uploads, registrations, health checks.

Here an auditor's search (``GET /v1/items``) is held inside the index's ``query_items``, after its query ran,
until a prober thread has asked ``/healthz``, a station's ledger head and a tus creation. Expected: all three
answered while the search is held, which ran in a console reader thread. Control: the same search with the
reads inline on the loop, as they were (``run_reads`` calling ``work()`` where it is), leaves ``/healthz``
unanswered until the search is released.
"""

from __future__ import annotations

import http.client
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.index import Role
from edge.central.sqlite.database import SqliteDatabase
from edge.central.storage import Readers
from tests.central.conftest import FakeStation, answers_healthz_again, enroll, get_json, start_http_central
from tests.central.lock_probe import HEALTHZ_BOUND_S, SEEN_WAITING_BOUND_S, STALLED_HEALTHZ_BOUND_S

_T = TypeVar("_T")
AUDITOR = "auditor-9"


@dataclass
class HeldSearch:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    thread: str = ""
    # What the prober got while the search was held: status, or None with the error (no answer in time).
    answers: dict[str, int | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _ask(url: str, method: str, path: str, headers: dict[str, str], bound_s: float) -> tuple[int | None, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=bound_s)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, ""
    except OSError as exc:  # socket.timeout included: no answer within the bound
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def _probe(url: str, held: HeldSearch, station: str, bound_s: float, everything: bool) -> None:
    """Once the search is held: ask what the central serves beside it, then release the search."""
    try:
        if not held.entered.wait(SEEN_WAITING_BOUND_S):
            return
        asks: list[tuple[str, str, str, dict[str, str]]] = [("healthz", "GET", "/healthz", {})]
        if everything:
            asks += [
                ("ledger", "GET", f"/v1/stations/{station}/ledger", {DEV_STATION_HEADER: station}),
                ("tus", "POST", "/v1/uploads", {DEV_STATION_HEADER: station, "Tus-Resumable": "1.0.0",
                                                "Upload-Length": "10"}),
            ]
        for name, method, path, headers in asks:
            held.answers[name], error = _ask(url, method, path, headers, bound_s)
            if error:
                held.errors[name] = error
    finally:
        held.release.set()


@pytest.mark.parametrize("on_the_loop", [False, True],
                         ids=["reads-in-reader-threads", "control-reads-inline"])
async def test_an_auditor_search_held_in_sqlite_leaves_the_central_serving(
    tmp_path: Path, station: FakeStation, monkeypatch: pytest.MonkeyPatch, on_the_loop: bool,
) -> None:
    central = await start_http_central(tmp_path, dev=True)
    try:
        index = central.index
        enroll(index, station)
        index.enroll_reader(AUDITOR, "a" * 64)
        central.running.parts.console.grant(AUDITOR, Role.SUPERVISOR, (), by="test-admin", reason="test")
        held = HeldSearch()
        search = index.query_items

        def held_search(*args: Any, **kwargs: Any) -> Any:
            found = search(*args, **kwargs)  # the real query, on whichever connection this thread reads
            held.thread = threading.current_thread().name
            held.entered.set()
            held.release.wait(SEEN_WAITING_BOUND_S * 2)
            return found

        monkeypatch.setattr(index, "query_items", held_search)
        database = index.unit
        assert isinstance(database, SqliteDatabase)
        if on_the_loop:
            async def inline(work: Callable[[], _T], readers: Readers = Readers.CONSOLE) -> _T:
                return work()  # the reads as they were: where the coroutine is, on the loop

            inline_reads: Callable[..., Awaitable[Any]] = inline
            monkeypatch.setattr(database, "run_reads", inline_reads)
        bound_s = STALLED_HEALTHZ_BOUND_S if on_the_loop else HEALTHZ_BOUND_S
        prober = threading.Thread(target=_probe, args=(central.url, held, station.station_id, bound_s,
                                                       not on_the_loop))
        prober.start()
        try:
            timeout = aiohttp.ClientTimeout(total=SEEN_WAITING_BOUND_S * 3)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                status, doc = await get_json(session, f"{central.url}/v1/items", {DEV_READER_HEADER: AUDITOR})
            assert status == 200 and doc["items"] == [], doc
        finally:
            held.release.set()
            prober.join(SEEN_WAITING_BOUND_S * 2)
        assert not prober.is_alive()
        assert held.entered.is_set(), "the search never reached the index"
        if on_the_loop:
            assert held.thread == threading.current_thread().name  # control: the search held the loop
            assert held.answers["healthz"] is None, "control: /healthz was answered while the loop was held"
            await answers_healthz_again(central.url)
        else:
            assert held.thread.startswith("sqlite-reader-console"), held.thread
            assert held.answers == {"healthz": 200, "ledger": 200, "tus": 201}, (
                f"the central did not serve beside a held auditor search: {held.answers} {held.errors}")
    finally:
        await central.running.stop()


async def test_sqlite_readers_read_committed_rows_and_write_only_through_a_transaction(
    tmp_path: Path, station: FakeStation,
) -> None:
    database = SqliteDatabase.open(tmp_path / "index.db")
    try:
        index = database.index
        enroll(index, station)  # committed on this thread's (the read-write) connection
        found = await database.run_reads(lambda: index.station(station.station_id), Readers.STATIONS)
        assert found is not None and found.station == station.station_id
        # A reader's own connection is read-only: a write outside a transaction is refused ...
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await database.run_reads(lambda: index.conn.execute("DELETE FROM stations"))

        # ... and a transaction a read opens (as the authenticator's recording of a refusal does) writes on
        # the read-write connection, under the writer mutex.
        def refusal_recorded() -> str:
            index.enroll_reader("auditor-1", "b" * 64)  # its own transaction
            return threading.current_thread().name

        thread = await database.run_reads(refusal_recorded)
        assert thread.startswith("sqlite-reader-console"), thread
        assert index.reader("auditor-1") is not None
    finally:
        database.close()
