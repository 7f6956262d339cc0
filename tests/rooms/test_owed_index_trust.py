"""The owed-products index is trusted only signed by this station's key and entry by entry as the ledger
has it; `edge verify` flags products still owed after a later agent start (review rev11c)."""

from __future__ import annotations

import json

from edge.custody.ledger import EntryType
from edge.durable.files import write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.owed import INDEX_NAME, OwedIndex
from edge.rooms.state import ROOMS_DIR
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION
from tests.rooms.test_rev11c_forged_owed_index import _stopped_without_products


async def test_a_signed_index_is_used_and_an_edited_one_is_rebuilt_from_the_ledger(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    session = await _stopped_without_products(store, pipeline)
    assert session in OwedIndex(store.layout.root, store.ledger, store.key).refresh()
    index = store.layout.root / ROOMS_DIR / INDEX_NAME
    doc = json.loads(index.read_bytes())
    assert doc["signature"]
    # Control: the saved, signed index loads as it is.
    loaded = OwedIndex(store.layout.root, store.ledger, store.key)
    assert loaded._load() and session in loaded.fold.owed
    # Emptied, its signature kept: refused, and the ledger read again says the session owes its products.
    write_atomic(index, json.dumps({**doc, "owed": {}}).encode())
    edited = OwedIndex(store.layout.root, store.ledger, store.key)
    assert not edited._load()
    assert session in edited.refresh()
    # Without the key the saved index is never trusted.
    assert not OwedIndex(store.layout.root, store.ledger)._load()


async def test_an_index_entry_must_be_the_ledgers_acquisition_of_that_sessions_manifest(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    first = await _stopped_without_products(store, pipeline)
    other = await _stopped_without_products(store, pipeline)
    index = OwedIndex(store.layout.root, store.ledger, store.key)
    owed = index.refresh()
    assert index._on_ledger(other, owed[other], index.to_seq) == owed[other]  # control
    try:
        index._on_ledger(first, owed[other], index.to_seq)
    except ValueError as exc:
        assert first in str(exc) and "not the acquisition of its manifest" in str(exc)
    else:
        raise AssertionError("another session's manifest taken for this one's")


async def test_verify_flags_products_still_owed_after_a_later_agent_start(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    session = await _stopped_without_products(store, pipeline)
    report = verify_store(store.layout.root)
    # Control: owed and no start since: a note (the agent makes them at its next start).
    assert not any(session in f"{p.where}: {p.what}" for p in report.problems)
    assert any(session in n and "owed" in n for n in report.notes)
    store.record(EntryType.STATION_STARTED, None, {"station": STATION})
    report = verify_store(store.layout.root)
    assert any(session in p.where and "the agent started since" in p.what for p in report.problems)
