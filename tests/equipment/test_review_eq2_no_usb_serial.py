"""Second review of issue 12: a recorder issued with no USB serial can never be checked in.

With `[recorders] allow_unknown = true` the desk (`CheckoutDesk._issue`, `UsbRecorderBench._inspect`) issues
a recorder whose USB serial cannot be read (the serial request STALLs: a common fault of cheap devices), and
the assignment records `usb_serial = ""`. `check_in_after_docking` refuses any docking whose USB serial is
empty ("not usb_serial"), so that recorder's own docking, ending `done`, is a refused check-in every time:
the officer holds it for ever (`already_holds`) and its overdue alert never closes.

Either answer closes it: the desk does not issue a recorder it could never take back (`why_not_ready`: "no
USB serial"), or the check-in takes it. The control: the same recorder with a readable USB serial is issued
and its docking checks it in.
"""

from __future__ import annotations

import pytest

from edge.equipment.checkout import CheckoutRefused, RefusalReason, check_in_after_docking
from simulators.recorder.device import UsbSerialFault
from tests.equipment.test_checkout import Rig, rig, store  # noqa: F401  (fixtures)


@pytest.mark.parametrize("fault", [None, UsbSerialFault.STALL], ids=["serial read", "serial stalls"])
async def test_a_recorder_the_desk_issues_can_be_checked_in_by_its_own_docking(
        rig: Rig, fault: UsbSerialFault | None) -> None:  # noqa: F811
    serial = rig.dock(0, "1-1.1", usb_serial_fault=fault)
    try:
        assignment = await rig.desk.check_out_by_card("01000734E0")
    except CheckoutRefused as refused:  # a fix: not issued, since it could never come back
        assert fault is not None and refused.reason is RefusalReason.NO_RECORDER_READY, refused
        return
    assert assignment.device_serial == serial
    # (The rig's access sends the password to any USB serial, as allow_unknown does.) Its own docking:
    # control protocol, on the USB serial the session reads (the desk's), every file sealed and wiped.
    returned = check_in_after_docking(rig.store, device_serial=serial, usb_serial=assignment.usb_serial,
                                      identity_source="usb-control", outcome="done", session="s-1", bay=1)
    refusals = [e["reason"] for e in rig.entries("refused") if e.get("what") == "check-in"]
    # Unfixed with the serial that stalls: issued with usb_serial "", then returned is None and the refusal
    # says "a recorder on USB serial (none) claims to be recorder 7654321, which is out with 警号 220001".
    assert returned is not None and returned.officer_no == "220001", (assignment.usb_serial, refusals)
