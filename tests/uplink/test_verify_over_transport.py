"""`edge verify` of a station store asks the central over the station's own uplink transport (the seam
of edge.uplink.transport), not over HTTPS of its own: an MQTT station has no other way to its central.

The wire here is the test-only line wire (framed JSON over TCP to a receiver built from the real
central's parts); the station's configuration points its HTTP URL at a port where nothing listens, so
whatever verify learns from the central came over the seam.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.verify.central_ledger import compare_with_central_ledger
from edge.verify.station import verify_store
from edge.verify.witness import fetch_central_view
from tests.uplink.line_wire import LineTransport
from tests.uplink.test_refusals import uplink_running
from tests.uplink.test_transport_seam import STATION, make_rig, media
from tests.uplink.test_verify_names_deleted_items import delete_item_everywhere

__all__ = ["media"]  # the fixture, used by name


async def test_verify_reads_the_central_view_and_its_ledger_copy_over_the_configured_transport(
    tmp_path: Path, media: Path
) -> None:
    async with make_rig(tmp_path, media) as rig:
        service = rig.service()
        async with uplink_running(service):
            assert await service.wait_drained(60), rig.states()
        config = service.config
        pinned = rig.central_key.public_key()
        item, path, acquired_seq = rig.store.conn.execute(
            "SELECT items.item, items.path, ledger.seq FROM items JOIN ledger ON ledger.item = items.item "
            "AND ledger.type = 'acquired' ORDER BY ledger.seq DESC LIMIT 1").fetchone()
        rig.store.close()
        store = tmp_path / "store"
        wire = LineTransport("127.0.0.1", rig.port, STATION)

        view = await fetch_central_view(config, transport=wire)
        assert view.failure is None and view.head == rig.central.parts.index.ledger_head(STATION)
        assert rig.receiver.count("ledger_state") >= 1
        untouched = verify_store(store, central_key=pinned, central_view=view)
        assert untouched.ok and untouched.checked["central_consulted"] == 1, untouched.problems

        delete_item_everywhere(store, item, path, acquired_seq)
        view = await fetch_central_view(config, transport=wire)
        report = verify_store(store, central_key=pinned, central_view=view)
        assert not report.ok and report.diverged_after is not None
        conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
        try:
            named = await compare_with_central_ledger(config, conn, report.diverged_after, pinned,
                                                      transport=wire)
        finally:
            conn.close()
        assert any(p.where == f"item {item}" and "lacks every entry about it" in p.what
                   for p in named.problems), (named.problems, named.notes)
        assert rig.receiver.count("ledger_page") >= 1

        # The control: without the line wire, the configured transport (tus, to a port where nothing
        # listens) is what verify uses, and it says it could not ask.
        offline = await fetch_central_view(config, timeout_s=5)
        assert offline.failure is not None and offline.head is None
