"""Review s9 (B): 7db4b40's `_seen_leaving` (edge/equipment/checkout.py) takes any `device_removed` of the
issued recorder's USB serial since the check-out, at any port, for "the recorder left its bay". A USB
serial is a claim, not an identity (a batch sharing a factory serial: the station records such shares):
another recorder on the same USB serial docked and pulled at bay 2 makes the issued recorder, never taken
from bay 1, "returned" by its found-at-start docking after an agent restart. Control: a removal at its own
port (it left its bay) does return it."""

from __future__ import annotations

import pytest

from edge.custody.ledger import EntryType
from edge.equipment.checkout import check_in_after_docking
from tests.equipment.test_checkout import Rig, rig, store  # noqa: F401  (fixtures)


@pytest.mark.parametrize("port", ["1-1.1", "1-1.2"], ids=["left its own bay (control)", "another port"])
async def test_a_removal_of_its_usb_serial_elsewhere_is_not_the_issued_recorder_leaving(
        rig: Rig, port: str) -> None:  # noqa: F811
    serial = rig.dock(0, "1-1.1")
    assignment = await rig.desk.check_out_by_card("01000734E0")
    assert assignment.device_serial == serial
    rig.store.record(EntryType.DEVICE_REMOVED, None, {"usb_serial": assignment.usb_serial, "usb_port": port,
                                                     "bay": 1 if port == "1-1.1" else 2, "source": "usb"})
    returned = check_in_after_docking(rig.store, device_serial=serial, usb_serial=assignment.usb_serial,
                                      identity_source="usb-control", outcome="done", session="s-9", bay=1,
                                      found_at_start=True)
    if port == "1-1.1":
        assert returned is not None
    else:
        assert returned is None, "returned though only another port's device on its USB serial left"
