"""Review of issue 12: which docking is a recorder's latest must not depend on the station's wall clock.

`edge.equipment.checkout.last_docking` takes the recorder's latest docking as the row with the greatest
`started` (station UTC text), rowid only breaking ties. A station clock stepped back (a clock that ran fast,
corrected by chrony or an operator; `[station] clock` need not be trusted for the desk to run) makes a
later docking sort before an earlier one: the recorder's last docking ended `partial` (files not all
copied, nothing wiped), yet the desk reads the earlier `done` docking and issues the recorder with its
files still on it. The fleet's reader (`fleet_records`, `ORDER BY started DESC, rowid DESC`) has the same
order. The control: the same two dockings with a clock that did not step: the desk refuses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from edge.equipment.checkout import CheckoutRefused, RefusalReason
from edge.ingest.repository import IngestRepository
from tests.equipment.test_checkout import Rig, rig, store  # noqa: F401  (fixtures)

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def docking(on: Rig, serial: str, usb_serial: str, started: datetime, outcome: str) -> None:
    repository = IngestRepository(on.store)
    session = str(uuid.uuid4())
    repository.start_session(session, device_serial=serial, usb_serial=usb_serial, bay=1,
                             started=started.strftime(FORMAT), facts={}, entry={"session": session})
    repository.end_session(session, ended=(started + timedelta(minutes=5)).strftime(FORMAT), outcome=outcome,
                           entry={"session": session, "outcome": outcome})


@pytest.mark.parametrize("clock_stepped_back", [False, True], ids=["steady clock", "clock stepped back 1 h"])
async def test_a_recorder_whose_last_docking_was_partial_is_not_issued(rig: Rig,  # noqa: F811
                                                                       clock_stepped_back: bool) -> None:
    serial = rig.dock(0, "1-1.1", outcome=None)
    usb_serial = rig.sim.bus.recorder_state(serial).usb_serial
    now = datetime.now(UTC)
    # First docking: done. (With the step, the station's clock read an hour fast then.)
    first = now + timedelta(hours=1) if clock_stepped_back else now - timedelta(hours=1)
    docking(rig, serial, usb_serial, first, "done")
    # The recorder went out, came back; this docking, the latest, copied only part of its files.
    docking(rig, serial, usb_serial, now, "partial")
    with pytest.raises(CheckoutRefused) as caught:  # failed before the fix with the step
        await rig.desk.check_out_by_card("01000734E0")
    assert caught.value.reason is RefusalReason.NO_RECORDER_READY
    assert "partial" in caught.value.detail, caught.value.detail
