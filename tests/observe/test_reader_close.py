"""The status readers' sqlite connections are closed at shutdown from the event loop while a read the
status board (or an API request) started may still run in a worker thread: a cancelled await does not
stop that thread. CPython's sqlite3 module crashes (SIGSEGV) when a connection is closed under another
thread's query; the agent died with exit -11 at stop that way (test_station_process's credential test,
faulthandler: a worker in StoreFactsReader.read -> unwitnessed_window while the loop thread had passed
StoreFactsReader.close). Each reader now makes the close wait for the read under way and refuses reads
after it.

The race runs in a child process so that a crash fails the test instead of killing pytest: a worker
reads in a loop while the main thread closes the reader at a point that moves a little every round.
Before the fix each child died with SIGSEGV within its 400 rounds (5 runs of 5); no sleeps: the worker
signals that it started and the close comes at once.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge.ingest.store import StationStore
from edge.observe.facts import StoreFactsReader
from edge.observe.items import StoreReader

_RACE = """
import sys, threading
from pathlib import Path
from edge.observe.facts import StoreFactsReader
from edge.observe.items import StoreReader

store_dir, which = Path(sys.argv[1]), sys.argv[2]
for round_ in range(400):
    if which == "facts":
        reader = StoreFactsReader(store_dir, spooling=True)
        read = reader.read
    else:
        reader = StoreReader(store_dir)
        read = lambda: reader.recent(50)
    read()
    started = threading.Event()
    refused = []

    def reads() -> None:
        started.set()
        for _ in range(50):
            try:
                read()
            except Exception as exc:  # after the close: refused, never a crash
                refused.append(type(exc).__name__)
                return

    worker = threading.Thread(target=reads)
    worker.start()
    started.wait()
    for _ in range(round_ % 300):  # moves the close across the worker's query a little every round
        pass
    reader.close()
    worker.join()
    assert set(refused) <= {"ProgrammingError"}, refused
print("survived")
"""


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    store = StationStore(tmp_path / "store", "TEST-STATION")
    store.close()
    return tmp_path / "store"


@pytest.mark.parametrize("which", ["facts", "items"])
def test_closing_a_reader_under_a_read_of_another_thread_does_not_crash(store_dir: Path, which: str) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _RACE, str(store_dir), which],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert done.stdout.strip() == "survived"


def test_a_closed_reader_refuses_reads_and_an_open_one_answers(store_dir: Path) -> None:
    facts = StoreFactsReader(store_dir, spooling=True)
    items = StoreReader(store_dir)
    # Control: while open, both answer from the real store (a fresh one: nothing stored yet).
    assert facts.read().spool.items == 0
    assert items.recent(10) == []
    facts.close()
    items.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        facts.read()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        items.recent(10)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        items.item("00000000-0000-0000-0000-000000000000")
